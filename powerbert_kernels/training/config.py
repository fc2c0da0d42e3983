"""The configurations of ``powerbert train`` and ``powerbert eval``, and their one validator.

Each field is also a command-line option: its metadata (:func:`~powerbert_kernels.cli_args.option`)
holds the help text and the range check, its default is the option's default, so the options are built
from these classes (:func:`~powerbert_kernels.cli_args.add_dataclass_arguments`) and checked by
:func:`validate_config` whether they come from the command line or from Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..cli_args import check_fields, option, retention_list
from .data import GLUE_TASKS
from .metrics import METRICS, REGRESSION_METRICS

GROUPS = {
    "data": "data (local files, or a GLUE task from the hub)",
    "training": "training",
    "start": "starting point and resuming",
    "output": "output",
}
"""Headings of the option groups in ``--help``, in order."""


def _number(text: str) -> float:
    import argparse

    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


@dataclass(kw_only=True)
class TaskOptions:
    """What ``train`` and ``eval`` share: the data, the sequence length, the metric, the timing."""

    eval_file: str | None = field(
        default=None, metadata=option("evaluation rows: .csv, .tsv (header row) or .json/.jsonl", group="data")
    )
    glue_task: str | None = field(
        default=None,
        metadata=option(
            "a GLUE classification task loaded with `datasets` instead "
            "(cola, sst2, mrpc, qqp, mnli, qnli, rte, wnli; needs network access)",
            group="data",
        ),
    )
    text_column: str = field(default="sentence", metadata=option("text column", group="data"))
    text_pair_column: str | None = field(
        default=None, metadata=option("second text column, for sentence-pair tasks", group="data")
    )
    label_column: str = field(
        default="label",
        metadata=option(
            "label column: ints or strings (classes), or real numbers such as 3.8 (regression)", group="data"
        ),
    )
    max_length: int = field(default=64, metadata=option("tokens per sequence, N", group="data"))
    metric: str | None = field(
        default=None,
        metadata=option(
            "the metric that decides (default: the GLUE task's, else accuracy; pearson for regression); "
            "mcc = Matthews correlation (CoLA), f1 = F1 of class 1 (macro F1 for more classes); pearson, "
            "spearman: correlations with real-valued labels (regression, STS-B)",
            group="data",
            choices=[*METRICS, *REGRESSION_METRICS],
        ),
    )
    bench_repeats: int = field(
        default=10, metadata=option("interleaved timing repeats", group="output", check="positive_int")
    )

    @property
    def metric_name(self) -> str:
        """The metric of a classification task."""
        return self.metric_for(regression=False)

    def metric_for(self, regression: bool) -> str:
        """The metric that decides, once the data (or the model) says whether the task is a regression.

        Raises:
            ValueError: ``--metric`` names a metric of the other kind of task.
        """
        return resolve_metric(self.metric, regression, self.glue_task)


@dataclass(kw_only=True)
class TrainConfig(TaskOptions):
    """Everything one run of the pipeline needs (the ``powerbert train`` options).

    Metric values are in points (x100). ``epochs``/``lr`` apply to every phase unless the per-phase
    value is set. ``soft_lr=None`` derives the learning rate of ``r`` from the search's length
    (:func:`~powerbert_kernels.training.pipeline.derive_soft_lr`), so the search converges whatever the
    data size.
    """

    model: str = field(
        metadata=option(
            "local model folder or hub id (a BERT; a pretrained encoder, or a fine-tuned classifier with "
            "--from-finetuned)"
        )
    )
    output_dir: str = field(metadata=option("where the final model, report.json and plots go"))
    train_file: str | None = field(
        default=None, metadata=option("training rows, in the format of --eval-file", group="data")
    )
    lambdas: Sequence[float] = field(
        default=(1e-3,),
        metadata=option(
            "retention penalty weight; several values run a trade-off sweep (paper: 1e-4 to 1e-3, up to 7e-3 for CoLA)",
            flag="--lambda",
            group="training",
            type=_number,
            nargs="+",
            metavar="LAMBDA",
        ),
    )
    lr: float = field(
        default=3e-5, metadata=option("model learning rate, every phase", group="training", check="positive")
    )
    soft_lr: float | None = field(
        default=None,
        metadata=option(
            "learning rate of the soft-extract parameters r (default: 6 / search steps, so that r can cross "
            "[0, 1] within about a third of the search whatever the data size; paper: 1e-4 to 1e-2)",
            group="training",
            type=float,
            check="positive",
        ),
    )
    epochs: float = field(default=3.0, metadata=option("epochs per phase", group="training", check="positive"))
    search_epochs: float | None = field(
        default=None,
        metadata=option("epochs of phase 2 (default: --epochs)", group="training", type=float, check="positive"),
    )
    retrain_epochs: float | None = field(
        default=None,
        metadata=option("epochs of phase 3 (default: --epochs)", group="training", type=float, check="positive"),
    )
    batch_size: int = field(
        default=32, metadata=option("training batch per device", group="training", check="positive_int")
    )
    eval_batch_size: int = field(
        default=64,
        metadata=option(
            "eval batch; also the batch the FLOP ratio and speed-up are measured at",
            group="training",
            check="positive_int",
        ),
    )
    grad_accum: int = field(
        default=1, metadata=option("gradient accumulation steps", group="training", check="positive_int")
    )
    weight_decay: float = field(
        default=0.01, metadata=option("model weight decay", group="training", check="non_negative")
    )
    warmup: float = field(
        default=0.1, metadata=option("warm-up fraction of each phase", group="training", check="fraction")
    )
    seed: int = field(default=42, metadata=option("random seed of every phase", group="training"))
    bf16: bool = field(default=False, metadata=option("bfloat16 mixed precision", group="training"))
    group_by_length: bool = field(
        default=False,
        metadata=option("batch examples of similar length together: less padding, faster training", group="training"),
    )
    from_finetuned: bool = field(
        default=False,
        metadata=option("--model is already fine-tuned on the task: skip phase 1 (it is the baseline)", group="start"),
    )
    from_searched: bool = field(
        default=False,
        metadata=option("--model holds a search's weights and configuration: run only phase 3", group="start"),
    )
    retention: Sequence[int] | None = field(
        default=None,
        metadata=option(
            "with --from-searched: the configuration (comma-separated counts) instead of the one in --model's config",
            group="start",
            type=retention_list,
        ),
    )
    baseline_model: str | None = field(
        default=None,
        metadata=option(
            "with --from-finetuned/--from-searched: the model to score as the baseline (default: --model, unpatched)",
            group="start",
        ),
    )
    resume: bool = field(
        default=False,
        metadata=option(
            "reuse complete phases in --output-dir and continue interrupted ones from their last checkpoint",
            group="start",
        ),
    )
    max_drop: float = field(
        default=1.0,
        metadata=option(
            "with a sweep: ship the highest FLOP ratio within this many points of the baseline",
            group="output",
            check="non_negative",
        ),
    )
    eval_strategy: str = field(
        default="epoch",
        metadata=option(
            "evaluate after every epoch, or (no) only at the end of each phase",
            group="output",
            choices=["epoch", "no"],
        ),
    )
    save_strategy: str = field(
        default="epoch",
        metadata=option(
            "checkpoint every epoch (needed to --resume a phase) or never", group="output", choices=["epoch", "no"]
        ),
    )
    logging_steps: int = field(
        default=50, metadata=option("log the loss every this many steps", group="output", check="positive_int")
    )
    keep_checkpoints: bool = field(default=False, metadata=option("keep each phase's last checkpoint", group="output"))
    report_to: str = field(default="none", metadata=option("Trainer integrations, e.g. tensorboard", group="output"))
    progress: bool = field(default=True, metadata=option("no progress bars", group="output"))


@dataclass(kw_only=True)
class EvalConfig(TaskOptions):
    """The ``powerbert eval`` options: a saved model scored against the same weights unpatched."""

    model: str = field(
        metadata=option(
            "a model folder saved by `powerbert train` (or any classifier whose config holds a retention configuration)"
        )
    )
    retention: Sequence[int] | Sequence[float] | None = field(
        default=None,
        metadata=option(
            "comma-separated counts or fractions to use instead of the configuration stored in the model "
            "(default: the stored one)",
            type=retention_list,
        ),
    )
    batch_size: int = field(
        default=64,
        metadata=option("eval batch; also the batch of the FLOP ratio and the timing", check="positive_int"),
    )
    no_speed: bool = field(default=False, metadata=option("skip the timing"))
    output: str | None = field(default=None, metadata=option("also write the result as JSON to this file"))


def resolve_metric(metric: str | None, regression: bool, glue_task: str | None = None, arg: str = "--metric") -> str:
    """``--metric``, or the default for the task: the GLUE task's, else accuracy, or pearson for regression.

    Raises:
        ValueError: a classification metric for regression data, or the reverse, naming ``arg``.
    """
    if metric is None:
        if regression:
            return REGRESSION_METRICS[0]
        return str(GLUE_TASKS[glue_task]["metric"]) if glue_task is not None else METRICS[0]
    if regression and metric not in REGRESSION_METRICS:
        raise ValueError(
            f"{arg} {metric} scores classes, but the task is a regression (real-valued labels); "
            f"use one of {list(REGRESSION_METRICS)}"
        )
    if not regression and metric not in METRICS:
        raise ValueError(
            f"{arg} {metric} scores real-valued labels, but the task is a classification; use one of {list(METRICS)}"
        )
    return metric


def validate_config(cfg: TaskOptions) -> None:
    """Raise ``ValueError`` naming the option for anything wrong in a :class:`TrainConfig` or
    :class:`EvalConfig` that needs no file or model."""
    check_fields(cfg)
    train = isinstance(cfg, TrainConfig)
    if cfg.glue_task is None and cfg.eval_file is None:
        raise ValueError(
            "data: give --eval-file (and --train-file), or --glue-task"
            if train
            else "data: give --eval-file or --glue-task"
        )
    if cfg.glue_task is not None and (cfg.eval_file or (train and cfg.train_file)):
        raise ValueError(
            "data: --glue-task and --train-file/--eval-file are alternatives; give one"
            if train
            else "data: --glue-task and --eval-file are alternatives; give one"
        )
    if cfg.glue_task is not None and cfg.glue_task not in GLUE_TASKS:
        raise ValueError(f"--glue-task must be one of {sorted(GLUE_TASKS)}, got {cfg.glue_task!r}")
    if isinstance(cfg.max_length, bool) or not isinstance(cfg.max_length, int) or cfg.max_length < 2:
        raise ValueError(
            f"--max-length must be an int >= 2 (the CLS token and at least one more), got {cfg.max_length!r}"
        )
    if cfg.metric is not None and cfg.metric not in (*METRICS, *REGRESSION_METRICS):
        raise ValueError(f"--metric must be one of {[*METRICS, *REGRESSION_METRICS]}, got {cfg.metric!r}")
    if cfg.glue_task is not None and cfg.metric is not None:
        resolve_metric(cfg.metric, False, cfg.glue_task)
    if train:
        _validate_train(cfg)


def _validate_train(cfg: TrainConfig) -> None:
    if cfg.glue_task is None and cfg.train_file is None:
        raise ValueError("--train-file: required for training (only --eval-file was given)")
    lambdas = list(cfg.lambdas)
    if not lambdas:
        raise ValueError("--lambda: give at least one value")
    for lam in lambdas:
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"--lambda must be >= 0 (the weight of the retention penalty), got {lam!r}")
    if len(set(lambdas)) != len(lambdas):
        raise ValueError(f"--lambda: values must be distinct, got {lambdas}")
    if cfg.from_finetuned and cfg.from_searched:
        raise ValueError("--from-finetuned and --from-searched are alternatives; give at most one")
    if cfg.retention is not None and not cfg.from_searched:
        raise ValueError("--retention: only with --from-searched (otherwise the search learns it)")
    if cfg.retention is not None and not all(isinstance(v, int) and not isinstance(v, bool) for v in cfg.retention):
        raise ValueError(f"--retention: give counts (ints), got {list(cfg.retention)}")
    if cfg.from_searched and len(lambdas) > 1:
        raise ValueError("--lambda: a sweep needs the search; --from-searched runs only the re-training")
    if cfg.baseline_model is not None and not (cfg.from_finetuned or cfg.from_searched):
        raise ValueError(
            "--baseline-model: only with --from-finetuned/--from-searched (otherwise phase 1 is the baseline)"
        )
    for name, value in (("--eval-strategy", cfg.eval_strategy), ("--save-strategy", cfg.save_strategy)):
        if value not in ("epoch", "no"):
            raise ValueError(f"{name} must be 'epoch' or 'no', got {value!r}")
