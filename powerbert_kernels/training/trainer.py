"""Hugging Face ``Trainer`` pieces for the three phases.

Only stable ``Trainer`` extension points are used (``compute_loss``, ``create_optimizer``, ``log`` and a
``TrainerCallback``), so distributed runs (``accelerate launch``/``torchrun``), mixed precision,
gradient accumulation and resuming from checkpoints work as with any other ``Trainer``.
"""

from __future__ import annotations

import logging

from transformers import Trainer, TrainerCallback

from ..models.soft_extract import clip_retention_, retention_masses, retention_penalty, soft_extracts

logger = logging.getLogger(__name__)


class PowerBertTrainer(Trainer):
    """``Trainer`` for phases 1 and 3 (fine-tuning and re-training with the hard extract).

    BERT's classification loss is a per-batch mean, yet its ``forward`` takes ``**kwargs``, which makes
    ``Trainer`` believe the model normalises the loss over the accumulated batch itself; it would then
    skip dividing by the gradient-accumulation steps. Declaring the loss a per-batch mean keeps the
    gradient the same for any accumulation setting.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False


class SoftExtractTrainer(PowerBertTrainer):
    """``Trainer`` for the configuration search (phase 2) on a model patched with soft extracts.

    Adds ``lambda * sum_j j * sum_k r_j[k]`` to the training loss (not to the eval loss, which stays
    the task loss), gives every ``r`` its own optimiser group (learning rate ``soft_lr``, no weight
    decay: decay would pull ``r`` towards 0 on top of the penalty), and logs the mass ``sum_k r_j[k]``
    of every layer with each log entry (progress output, ``trainer_state.json``, any report_to).
    Add :class:`SoftExtractCallback` (done here) to keep ``r`` in [0, 1].

    Args:
        retention_lambda: lambda >= 0, the weight of the penalty.
        soft_lr: learning rate of ``r``.
    """

    def __init__(self, *args, retention_lambda: float, soft_lr: float, **kwargs) -> None:
        if not retention_lambda >= 0:
            raise ValueError(f"retention_lambda must be >= 0, got {retention_lambda}")
        if not soft_lr > 0:
            raise ValueError(f"soft_lr must be > 0, got {soft_lr}")
        super().__init__(*args, **kwargs)
        self.extracts = soft_extracts(self.model)
        if not self.extracts:
            raise ValueError("model: no SoftExtract found; patch it with apply_power_bert(model, extracts=...)")
        self.retention_lambda = float(retention_lambda)
        self.soft_lr = float(soft_lr)
        self.soft_callback = SoftExtractCallback(self.extracts)
        self.add_callback(self.soft_callback)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and self.retention_lambda > 0:
            # Added per micro-batch; Trainer divides the sum by the accumulation steps, so the penalty
            # counts once per optimiser step. Every rank adds the same penalty, so its DDP-averaged
            # gradient is the penalty's own.
            loss = loss + self.retention_lambda * retention_penalty(self.extracts).to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, *args, **kwargs):
        created = self.optimizer is None
        optimizer = super().create_optimizer(*args, **kwargs)
        if created:
            # Move r out of Trainer's groups into its own; done before the first step, so no optimiser
            # state exists yet and the groups are saved and restored by checkpoints as built here.
            soft = {id(e.r) for e in self.extracts}
            if not hasattr(optimizer, "param_groups") or not hasattr(optimizer, "add_param_group"):
                raise TypeError(f"the optimizer {type(optimizer).__name__} has no param groups to give r its own")
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in soft]
            optimizer.add_param_group({"params": [e.r for e in self.extracts], "lr": self.soft_lr, "weight_decay": 0.0})
        return optimizer

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        for j, mass in enumerate(retention_masses(self.extracts), start=1):
            logs[f"mass_{j}"] = round(mass, 3)
        super().log(logs, *args, **kwargs)


class SoftExtractCallback(TrainerCallback):
    """Clips every ``r`` to [0, 1] after each optimiser step and logs the masses per layer.

    Projected gradient descent: the optimiser may step ``r`` out of [0, 1] (Adam's steps are about the
    learning rate in size whatever the gradient), and clipping puts it back, so a vector's scale never
    exceeds its stock value and never goes negative.

    Attributes:
        history: ``{optimiser step: masses per layer}`` after every step of this process's run (a resumed
            run starts at its checkpoint's step); the pipeline reads whether the search settled from it.
    """

    def __init__(self, extracts) -> None:
        self.extracts = list(extracts)
        self.history: dict[int, list[float]] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        clip_retention_(self.extracts)

    def on_step_end(self, args, state, control, **kwargs):
        clip_retention_(self.extracts)
        self.history[state.global_step] = retention_masses(self.extracts)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            masses = ", ".join(f"{m:.1f}" for m in retention_masses(self.extracts))
            logger.info("step %d: retention mass per layer [%s]", state.global_step, masses)
