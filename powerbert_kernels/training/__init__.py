"""The three-phase PoWER-BERT training pipeline on Hugging Face ``Trainer`` and ``datasets``.

1. fine-tune the model on the task; 2. search the retention configuration with soft extracts;
3. re-train with the hard extract at the learned configuration. See :mod:`.pipeline`.
"""

from .metrics import accuracy, all_metrics, f1_score, matthews_corrcoef
from .pipeline import Pipeline, TrainConfig, run_pipeline, select_run
from .trainer import PowerBertTrainer, SoftExtractCallback, SoftExtractTrainer
from .tune import TuneResult, tune_retention

__all__ = [
    "Pipeline",
    "PowerBertTrainer",
    "SoftExtractCallback",
    "SoftExtractTrainer",
    "TrainConfig",
    "accuracy",
    "all_metrics",
    "f1_score",
    "matthews_corrcoef",
    "run_pipeline",
    "select_run",
    "tune_retention",
    "TuneResult",
]
