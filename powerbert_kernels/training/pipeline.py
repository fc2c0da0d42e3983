"""The three PoWER-BERT phases end to end: fine-tune, search the retention configuration, re-train.

:func:`run_pipeline` takes a :class:`TrainConfig` and writes, under ``output_dir``::

    finetune/                    phase 1: the fine-tuned model (+ tokenizer), phase.json
    lambda_<value>/search/       phase 2: weights after the search (stock model, learned configuration
                                 in config.json), phase.json with the masses and r of every layer
    lambda_<value>/retrain/      phase 3: the PoWER-BERT model re-trained at that configuration
    config.json, model.safetensors, tokenizer files
                                 the final model: from_pretrained + apply_power_bert(model)
    report.json                  metrics, configuration, FLOP ratio, measured speed-up, phase times
    retention.png, tradeoff.png  tokens kept per layer; metric against FLOP ratio (several lambdas)

Every phase folder gets its ``phase.json`` when the phase is complete; with ``resume`` a complete phase
is loaded instead of re-run and an interrupted one continues from its last ``Trainer`` checkpoint.
Distributed runs (``torchrun``/``accelerate launch``) train on every process; files are written and the
speed measured by the main process only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict

from .config import TrainConfig, validate_config
from .data import TextClassificationData, has_named_labels, load_glue, load_local, tokenize
from .metrics import METRICS, REGRESSION_METRICS

logger = logging.getLogger(__name__)

PHASE_FILE = "phase.json"
REPORT_FILE = "report.json"


SEARCH_REACH = 3.0
"""How far each ``r`` can travel over a search, in units of its range [0, 1] (see :func:`derive_soft_lr`)."""
SETTLE_TAIL = 0.1
"""The search settled when its last 10% of steps moved no layer's mass by a whole vector."""


def derive_soft_lr(steps: int, reach: float = SEARCH_REACH) -> float:
    """The learning rate of ``r`` that lets it travel ``reach`` over a search of ``steps`` optimiser steps.

    Adam moves each ``r`` by about its learning rate per step whatever the gradient's size, so a fixed
    rate bounds the search's reach by ``rate x steps``: too few steps (small data) and ``r`` cannot fall
    to what the trade-off wants, and the search ends wherever it happened to be. Under the linear
    warm-up/decay schedule the rate averages half its peak, so the reach is ``peak x steps / 2``; with
    ``reach = 3``, ``r`` can cross [0, 1] within about the first third of the phase and spends the rest
    settling. 650 steps (SST-2's 6,920 sentences, 3 epochs, batch 32) give 9.2e-3, 113 steps
    (1,200 sentences) 5.3e-2.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return 2.0 * reach / steps


def mass_settled(history: dict[int, Sequence[float]], total_steps: int, tail: float = SETTLE_TAIL):
    """Whether the masses had settled: ``(settled, moved)``.

    ``moved`` is the largest change of any layer's mass over the last ``tail`` of the steps (from the
    first recorded step at or after ``total_steps x (1 - tail)`` to the last); settled means less than
    one vector. ``(None, None)`` when the history does not reach back that far (a run resumed late).
    """
    if not history:
        return None, None
    last = max(history)
    start = min((step for step in history if step >= total_steps * (1 - tail)), default=None)
    if start is None or start >= last:
        return None, None
    moved = max(abs(a - b) for a, b in zip(history[last], history[start], strict=True))
    return bool(moved < 1.0), float(moved)


def lambda_tag(lam: float) -> str:
    """Folder name of one lambda's phases 2 and 3."""
    return f"lambda_{lam:g}"


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _barrier() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def _write_json(path: str, obj) -> None:
    if _is_main():
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")


def _read_phase(folder: str) -> dict | None:
    path = os.path.join(folder, PHASE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


class Pipeline:
    """One run of the three phases (see the module docstring); build it, then call :meth:`run`."""

    def __init__(self, cfg: TrainConfig) -> None:
        validate_config(cfg)
        self.cfg = cfg
        self._prepare()

    # ------------------------------------------------------------------ set-up (every check before training)

    def _prepare(self) -> None:
        from transformers import AutoConfig, AutoTokenizer, DataCollatorWithPadding
        from transformers.utils import logging as hf_logging

        from ..models.architectures import registered_model_types
        from ..models.loading import is_regression
        from ..models.retention import CONFIG_KEY, validate_retention

        cfg = self.cfg
        if not cfg.progress:
            import datasets

            hf_logging.disable_progress_bar()
            datasets.disable_progress_bars()
        try:
            model_config = AutoConfig.from_pretrained(cfg.model)
        except Exception as e:
            raise ValueError(f"--model: cannot load a model configuration from {cfg.model!r} ({e})") from e
        if model_config.model_type not in registered_model_types():
            raise ValueError(
                f"--model: model type {model_config.model_type!r} cannot be patched; PoWER-BERT supports "
                f"{registered_model_types()}"
            )
        max_positions = model_config.max_position_embeddings
        if cfg.max_length > max_positions:
            raise ValueError(f"--max-length {cfg.max_length} exceeds the model's maximum positions ({max_positions})")
        self.model_config = model_config
        given = cfg.from_finetuned or cfg.from_searched
        known = model_config.label2id if given else None
        if cfg.glue_task is not None:
            data = load_glue(cfg.glue_task)
        else:
            data = load_local(
                cfg.eval_file,
                cfg.train_file,
                text_column=cfg.text_column,
                text_pair_column=cfg.text_pair_column,
                label_column=cfg.label_column,
                known_label2id=known,
                # A fine-tuned model decides whether the labels are classes or real values.
                regression=is_regression(model_config) if given else None,
            )
        if given and is_regression(model_config) != data.regression:
            raise ValueError(
                f"--model: {cfg.model} is a {'regression model' if is_regression(model_config) else 'classifier'} "
                f"but the data is a {'regression' if data.regression else 'classification'} task"
            )
        self.metric_name = cfg.metric_for(data.regression)
        if given and not data.regression and model_config.num_labels != data.num_labels:
            raise ValueError(
                f"--model: the fine-tuned model has {model_config.num_labels} labels but the data has "
                f"{data.num_labels} ({list(data.id2label.values())})"
            )
        if given and not data.regression and not has_named_labels(model_config.label2id):
            logger.warning("--model has no label names; assuming its label ids are the data's %s", dict(data.id2label))
        self.data: TextClassificationData = data
        self.retention = None
        if cfg.from_searched:
            retention = cfg.retention if cfg.retention is not None else getattr(model_config, CONFIG_KEY, None)
            if retention is None:
                raise ValueError(
                    f"--from-searched: {cfg.model} holds no learned configuration ({CONFIG_KEY} in config.json); "
                    "pass --retention"
                )
            self.retention = validate_retention(list(retention), model_config.num_hidden_layers, max_positions)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        except Exception as e:
            raise ValueError(f"--model: cannot load a tokenizer from {cfg.model!r} ({e})") from e
        self.train_ds = tokenize(data.train, self.tokenizer, data, cfg.max_length)
        self.eval_ds = tokenize(data.eval, self.tokenizer, data, cfg.max_length)
        self.collator = DataCollatorWithPadding(self.tokenizer)

    # ------------------------------------------------------------------ helpers

    def _training_args(self, folder: str, epochs: float):
        import torch
        import transformers
        from transformers import TrainingArguments

        cfg = self.cfg
        kwargs = dict(
            output_dir=folder,
            num_train_epochs=epochs,
            learning_rate=cfg.lr,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.eval_batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            weight_decay=cfg.weight_decay,
            eval_strategy=cfg.eval_strategy,
            save_strategy=cfg.save_strategy,
            save_total_limit=1,
            logging_steps=cfg.logging_steps,
            seed=cfg.seed,
            bf16=cfg.bf16,
            report_to=cfg.report_to,
            disable_tqdm=not cfg.progress,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        fields = {f.name for f in dataclasses.fields(TrainingArguments)}
        # Transformers 5 takes a warm-up fraction as a float warmup_steps; 4.x had warmup_ratio.
        if int(transformers.__version__.split(".")[0]) >= 5:
            kwargs["warmup_steps"] = cfg.warmup
        else:
            kwargs["warmup_ratio"] = cfg.warmup
        if cfg.group_by_length:
            # Batches of similar lengths pad less (dynamic padding): the same examples, far fewer FLOPs.
            if "train_sampling_strategy" in fields:
                kwargs["train_sampling_strategy"] = "group_by_length"
            else:
                kwargs["group_by_length"] = True
        return TrainingArguments(**kwargs)

    def _trainer(self, cls, model, folder: str, epochs: float, **extra):
        from .metrics import compute_metrics_fn

        return cls(
            model=model,
            args=self._training_args(folder, epochs),
            train_dataset=self.train_ds,
            eval_dataset=self.eval_ds,
            data_collator=self.collator,
            processing_class=self.tokenizer,
            compute_metrics=compute_metrics_fn(self.data.num_labels, self.data.regression),
            **extra,
        )

    def _resume_from(self, folder: str) -> str | None:
        from transformers.trainer_utils import get_last_checkpoint

        if not self.cfg.resume or not os.path.isdir(folder):
            return None
        last = get_last_checkpoint(folder)
        if last is not None:
            logger.info("resuming from %s", last)
        return last

    def _finish_phase(self, folder: str, summary: dict) -> dict:
        if _is_main() and not self.cfg.keep_checkpoints:
            for name in os.listdir(folder):
                if name.startswith("checkpoint-"):
                    shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        _write_json(os.path.join(folder, PHASE_FILE), summary)
        _barrier()
        return summary

    def _load(self, path: str, new_head: bool = False):
        from transformers import AutoModelForSequenceClassification, set_seed

        set_seed(self.cfg.seed)
        # Regression: one output, which HF's heads train with the MSE loss under problem_type="regression".
        labels = {} if self.data.regression else {"id2label": dict(self.data.id2label), "label2id": self.data.label2id}
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=self.data.num_labels,
            **labels,
            # Phase 1 starts a new task: a classifier head of another size in the checkpoint is replaced.
            ignore_mismatched_sizes=new_head,
        )
        model.config.problem_type = "regression" if self.data.regression else "single_label_classification"
        return model

    def _metrics(self, eval_output: dict) -> dict[str, float]:
        names = REGRESSION_METRICS if self.data.regression else METRICS
        return {name: float(eval_output[f"eval_{name}"]) for name in names}

    def _evaluate(self, model, folder: str) -> dict[str, float]:
        from .trainer import PowerBertTrainer

        trainer = self._trainer(PowerBertTrainer, model, folder, 1.0)
        return self._metrics(trainer.evaluate())

    # ------------------------------------------------------------------ phases

    def finetune(self) -> dict:
        """Phase 1: fine-tune ``cfg.model`` on the task; returns the phase summary."""
        from .trainer import PowerBertTrainer

        folder = os.path.join(self.cfg.output_dir, "finetune")
        done = _read_phase(folder) if self.cfg.resume else None
        if done is not None:
            logger.info("phase 1 (fine-tune): complete in %s, reusing it", folder)
            return done
        logger.info("phase 1 (fine-tune): %s for %g epochs", self.cfg.model, self.cfg.epochs)
        start = time.perf_counter()
        model = self._load(self.cfg.model, new_head=True)
        trainer = self._trainer(PowerBertTrainer, model, folder, self.cfg.epochs)
        trainer.train(resume_from_checkpoint=self._resume_from(folder))
        trainer.save_model(folder)
        metrics = self._metrics(trainer.evaluate())
        summary = {
            "phase": "finetune",
            "model_path": folder,
            "metrics": metrics,
            "seconds": time.perf_counter() - start,
        }
        logger.info("phase 1 done: %s", _fmt(metrics))
        return self._finish_phase(folder, summary)

    def baseline_from_given(self) -> dict:
        """Phases skipped: the baseline is the given fine-tuned model (or --baseline-model), unpatched."""
        path = self.cfg.baseline_model or self.cfg.model
        model = self._load(path)
        metrics = self._evaluate(model, os.path.join(self.cfg.output_dir, "baseline_eval"))
        shutil.rmtree(os.path.join(self.cfg.output_dir, "baseline_eval"), ignore_errors=True)
        return {"phase": "given", "model_path": path, "metrics": metrics, "seconds": 0.0}

    def search(self, start_path: str, lam: float) -> dict:
        """Phase 2: learn the retention configuration with soft extracts at penalty weight ``lam``."""
        from ..models import apply_power_bert, remove_power_bert
        from ..models.retention import CONFIG_KEY
        from ..models.soft_extract import SoftExtract, derive_retention, retention_masses, soft_extracts
        from .trainer import SoftExtractTrainer

        cfg = self.cfg
        folder = os.path.join(cfg.output_dir, lambda_tag(lam), "search")
        done = _read_phase(folder) if cfg.resume else None
        if done is not None:
            logger.info("phase 2 (search, lambda=%g): complete in %s, reusing it", lam, folder)
            return done
        epochs = cfg.search_epochs or cfg.epochs
        steps = self.search_steps(epochs)
        soft_lr = cfg.soft_lr if cfg.soft_lr is not None else derive_soft_lr(steps)
        logger.info(
            "phase 2 (search): lambda=%g, lr(r)=%.3g%s, %g epochs (%d steps), from %s",
            lam,
            soft_lr,
            "" if cfg.soft_lr is not None else " (derived from the steps)",
            epochs,
            steps,
            start_path,
        )
        start = time.perf_counter()
        model = self._load(start_path)
        num_layers = model.config.num_hidden_layers
        apply_power_bert(model, extracts=[SoftExtract(cfg.max_length) for _ in range(num_layers)])
        trainer = self._trainer(SoftExtractTrainer, model, folder, epochs, retention_lambda=lam, soft_lr=soft_lr)
        trainer.train(resume_from_checkpoint=self._resume_from(folder))
        extracts = soft_extracts(model)
        masses = retention_masses(extracts)
        retention = derive_retention(masses, cfg.max_length, model.config.max_position_embeddings)
        soft_metrics = self._metrics(trainer.evaluate())
        r_values = [e.r.detach().cpu().tolist() for e in extracts]
        history = [
            {"step": entry["step"], "masses": [entry[f"mass_{j}"] for j in range(1, num_layers + 1)]}
            for entry in trainer.state.log_history
            if "mass_1" in entry and "loss" in entry
        ]
        records = {entry["step"]: entry["masses"] for entry in history}
        records.update(trainer.soft_callback.history)
        settled, moved = mass_settled(records, trainer.state.max_steps)
        if settled is False:
            logger.warning(
                "phase 2 (lambda=%g): the search had not settled: a layer's mass still moved by %.1f vectors in "
                "the last %d%% of the steps; the configuration may keep more than the trade-off wants "
                "(raise --search-epochs or --soft-lr)",
                lam,
                moved,
                round(SETTLE_TAIL * 100),
            )
        remove_power_bert(model)
        setattr(model.config, CONFIG_KEY, list(retention))
        if _is_main():
            model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
        summary = {
            "phase": "search",
            "lambda": lam,
            "model_path": folder,
            "masses": masses,
            "retention": retention,
            "soft_metrics": soft_metrics,
            "mass_history": history,
            "search_settled": settled,
            "mass_moved_at_end": moved,
            "soft_lr": soft_lr,
            "search_steps": trainer.state.max_steps,
            "r": r_values,
            "seconds": time.perf_counter() - start,
        }
        logger.info(
            "phase 2 done: masses %s -> retention %s; soft model %s",
            [round(m, 1) for m in masses],
            retention,
            _fmt(soft_metrics),
        )
        return self._finish_phase(folder, summary)

    def retrain(self, start_path: str, retention: Sequence[int], lam: float | None) -> dict:
        """Phase 3: re-train with the hard extract at ``retention``, from the search's weights."""
        from ..models import apply_power_bert, flop_ratio
        from ..models.retention import keep_counts
        from .trainer import PowerBertTrainer

        cfg = self.cfg
        tag = lambda_tag(lam) if lam is not None else "given"
        folder = os.path.join(cfg.output_dir, tag, "retrain")
        done = _read_phase(folder) if cfg.resume else None
        if done is not None:
            logger.info("phase 3 (re-train, %s): complete in %s, reusing it", tag, folder)
            return done
        epochs = cfg.retrain_epochs or cfg.epochs
        logger.info("phase 3 (re-train): retention %s, %g epochs, from %s", list(retention), epochs, start_path)
        start = time.perf_counter()
        model = self._load(start_path)
        apply_power_bert(model, list(retention))
        trainer = self._trainer(PowerBertTrainer, model, folder, epochs)
        trainer.train(resume_from_checkpoint=self._resume_from(folder))
        trainer.save_model(folder)
        metrics = self._metrics(trainer.evaluate())
        seconds = time.perf_counter() - start
        summary = {
            "phase": "retrain",
            "lambda": lam,
            "model_path": folder,
            "retention": list(retention),
            "metrics": metrics,
            "flop_ratio": flop_ratio(model, cfg.eval_batch_size, cfg.max_length, list(retention)),
            "flop_ratio_eval_set": self.eval_set_flop_ratio(model, list(retention)),
            "kept_per_layer": keep_counts(list(retention), cfg.max_length),
            "seconds": seconds,
        }
        logger.info("phase 3 done: %s, FLOP ratio %.2f", _fmt(metrics), summary["flop_ratio"])
        return self._finish_phase(folder, summary)

    def search_steps(self, epochs: float) -> int:
        """Optimiser steps of a search of ``epochs`` epochs (``Trainer``'s count, over every process)."""
        from accelerate import PartialState

        per_step = self.cfg.batch_size * self.cfg.grad_accum * PartialState().num_processes
        return max(1, math.ceil(math.ceil(len(self.train_ds) / per_step) * epochs))

    # ------------------------------------------------------------------ measurements

    def eval_set_flop_ratio(self, model, retention: Sequence[int]) -> float:
        from .measure import eval_set_flop_ratio

        lengths = [len(ids) for ids in self.eval_ds["input_ids"]]
        return eval_set_flop_ratio(model, lengths, self.cfg.eval_batch_size, retention)

    def measure_speed(self, model_path: str) -> dict:
        """Interleaved timing of the saved model against the same weights unpatched (main process only),
        on the first ``eval_batch_size`` eval rows padded to ``max_length``."""
        from .measure import measure_speed, padded_batch

        inputs = padded_batch(self.tokenizer, self.eval_ds, self.cfg.eval_batch_size, self.cfg.max_length)
        return measure_speed(model_path, inputs, self.cfg.bench_repeats)

    # ------------------------------------------------------------------ the whole run

    def run(self) -> dict:
        cfg = self.cfg
        total_start = time.perf_counter()
        if cfg.from_finetuned or cfg.from_searched:
            baseline = self.baseline_from_given()
            start_path = cfg.model
        else:
            baseline = self.finetune()
            start_path = baseline["model_path"]
        runs = []
        for lam in [None] if cfg.from_searched else list(cfg.lambdas):
            if lam is None:
                search, retrain_from, retention = None, start_path, self.retention
            else:
                search = self.search(start_path, lam)
                retrain_from, retention = search["model_path"], search["retention"]
            retrain = self.retrain(retrain_from, retention, lam)
            run = {
                "lambda": lam,
                "retention": retrain["retention"],
                "kept_per_layer": retrain["kept_per_layer"],
                "metrics": retrain["metrics"],
                "power_metric": retrain["metrics"][self.metric_name],
                "flop_ratio": retrain["flop_ratio"],
                "flop_ratio_eval_set": retrain["flop_ratio_eval_set"],
                "model_path": retrain["model_path"],
                "phase_seconds": {
                    "finetune": baseline["seconds"],
                    "search": search["seconds"] if search else 0.0,
                    "retrain": retrain["seconds"],
                },
            }
            if search is not None:
                run["masses"] = search["masses"]
                run["soft_metrics"] = search["soft_metrics"]
                run["mass_history"] = search["mass_history"]
                run["search_settled"] = search.get("search_settled")
                run["soft_lr"] = search.get("soft_lr")
            if _is_main():
                run.update(self.measure_speed(retrain["model_path"]))
                logger.info(
                    "measured speed-up %.2fx (%.1f ms -> %.1f ms) at FLOP ratio %.2fx",
                    run["speedup"],
                    run["baseline_ms"],
                    run["power_ms"],
                    run["flop_ratio"],
                )
            runs.append(run)
        chosen = select_run(runs, baseline["metrics"][self.metric_name], self.metric_name, cfg.max_drop)
        report = self._report(baseline, runs, chosen, time.perf_counter() - total_start)
        if _is_main():
            self._save_final(chosen)
            _write_json(os.path.join(cfg.output_dir, REPORT_FILE), report)
            from .plots import plot_retention, plot_tradeoff

            plot_retention(report, os.path.join(cfg.output_dir, "retention.png"))
            if len(runs) > 1:
                plot_tradeoff(report, os.path.join(cfg.output_dir, "tradeoff.png"))
        _barrier()
        return report

    def _save_final(self, run: dict) -> None:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(run["model_path"])
        model.save_pretrained(self.cfg.output_dir)
        self.tokenizer.save_pretrained(self.cfg.output_dir)

    def _report(self, baseline: dict, runs: list[dict], chosen: dict, seconds: float) -> dict:
        cfg = self.cfg
        name = self.metric_name
        keys = (
            "retention",
            "kept_per_layer",
            "power_metric",
            "flop_ratio",
            "flop_ratio_eval_set",
            "speedup",
            "baseline_ms",
            "power_ms",
            "phase_seconds",
            "lambda",
            "metrics",
            "search_settled",
            "soft_lr",
        )
        config = {k: v for k, v in asdict(cfg).items() if k != "progress"}
        config["lambdas"] = list(cfg.lambdas)
        return {
            "task": "regression" if self.data.regression else "classification",
            "metric_name": name,
            "baseline_metric": baseline["metrics"][name],
            **{k: chosen.get(k) for k in keys},
            "baseline_metrics": baseline["metrics"],
            "baseline_source": baseline["model_path"],
            "max_length": cfg.max_length,
            "eval_batch_size": cfg.eval_batch_size,
            "num_train": len(self.train_ds),
            "num_eval": len(self.eval_ds),
            "labels": {str(k): v for k, v in self.data.id2label.items()},
            "data": self.data.source,
            "total_seconds": seconds,
            "selection": f"highest FLOP ratio within {cfg.max_drop:g} points of the baseline {name}, "
            "else the best metric",
            "runs": runs,
            "bench": {k: chosen.get(k) for k in ("batch", "seq_len", "repeats", "environment")},
            "config": config,
        }


def select_run(runs: list[dict], baseline_metric: float, metric_name: str, max_drop: float) -> dict:
    """The run to ship: the highest FLOP ratio within ``max_drop`` points of the baseline, else the best metric."""
    close = [r for r in runs if r["metrics"][metric_name] >= baseline_metric - max_drop]
    if close:
        return max(close, key=lambda r: (r["flop_ratio"], r["metrics"][metric_name]))
    return max(runs, key=lambda r: (r["metrics"][metric_name], r["flop_ratio"]))


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())


def run_pipeline(cfg: TrainConfig) -> dict:
    """Validate ``cfg`` and the data, run the three phases, write the outputs; returns the report."""
    return Pipeline(cfg).run()
