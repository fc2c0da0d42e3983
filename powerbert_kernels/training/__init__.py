"""The three-phase PoWER-BERT training pipeline on Hugging Face ``Trainer`` and ``datasets``.

1. fine-tune the model on the task; 2. search the retention configuration with soft extracts;
3. re-train with the hard extract at the learned configuration. See :mod:`.pipeline`.

The names below load on first use, so that ``powerbert train --help`` does not import transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY: dict[str, str] = {
    "Pipeline": ".pipeline",
    "PowerBertTrainer": ".trainer",
    "SoftExtractCallback": ".trainer",
    "SoftExtractTrainer": ".trainer",
    "EvalConfig": ".config",
    "TrainConfig": ".config",
    "accuracy": ".metrics",
    "all_metrics": ".metrics",
    "f1_score": ".metrics",
    "matthews_corrcoef": ".metrics",
    "pearson": ".metrics",
    "regression_metrics": ".metrics",
    "spearman": ".metrics",
    "run_pipeline": ".pipeline",
    "select_run": ".pipeline",
    "validate_config": ".config",
    "TuneResult": ".tune",
    "tune_retention": ".tune",
}

if TYPE_CHECKING:
    from .config import EvalConfig, TrainConfig, validate_config
    from .metrics import accuracy, all_metrics, f1_score, matthews_corrcoef, pearson, regression_metrics, spearman
    from .pipeline import Pipeline, run_pipeline, select_run
    from .trainer import PowerBertTrainer, SoftExtractCallback, SoftExtractTrainer
    from .tune import TuneResult, tune_retention


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "EvalConfig",
    "Pipeline",
    "PowerBertTrainer",
    "SoftExtractCallback",
    "SoftExtractTrainer",
    "TrainConfig",
    "TuneResult",
    "accuracy",
    "all_metrics",
    "f1_score",
    "matthews_corrcoef",
    "pearson",
    "regression_metrics",
    "run_pipeline",
    "select_run",
    "spearman",
    "tune_retention",
    "validate_config",
]
