"""PoWER-BERT: progressive word-vector elimination for fast BERT-family inference.

Quick start::

    from transformers import AutoModelForSequenceClassification
    from powerbert_kernels import apply_power_bert

    model = AutoModelForSequenceClassification.from_pretrained(path)
    apply_power_bert(model, retention=[76, 62, 55, 52, 42, 40, 36, 24, 17, 13, 11, 3])
    logits = model(**batch).logits
"""

from . import ops
from .ext import available_backends, backend_report
from .models import (
    PowerBertModelOutput,
    apply_power_bert,
    flop_ratio,
    from_pretrained,
    is_patched,
    model_flops,
    remove_power_bert,
)
from .ops import BACKENDS, BackendUnavailableError

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "PowerBertModelOutput",
    "__version__",
    "apply_power_bert",
    "available_backends",
    "backend_report",
    "flop_ratio",
    "from_pretrained",
    "is_patched",
    "model_flops",
    "ops",
    "remove_power_bert",
    "tune_retention",
]


def __getattr__(name: str):
    # The tuner pulls in the training stack (transformers' Trainer): imported on first use only.
    if name == "tune_retention":
        from .training.tune import tune_retention

        return tune_retention
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
