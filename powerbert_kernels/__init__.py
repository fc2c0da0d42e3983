"""PoWER-BERT: progressive word-vector elimination for fast BERT-family inference.

Quick start::

    from transformers import AutoModelForSequenceClassification
    from powerbert_kernels import apply_power_bert

    model = AutoModelForSequenceClassification.from_pretrained(path)
    apply_power_bert(model, retention=[76, 62, 55, 52, 42, 40, 36, 24, 17, 13, 11, 3])
    logits = model(**batch).logits
"""

import importlib

from . import ops
from .models import (
    PowerBertModelOutput,
    apply_power_bert,
    flop_ratio,
    is_patched,
    model_flops,
    remove_power_bert,
)
from .ops import BACKENDS, BackendUnavailableError, available_backends, backend_report

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
    "is_patched",
    "model_flops",
    "ops",
    "remove_power_bert",
]

# Loaded on first access (``powerbert_kernels.training``), so that importing the package stays light: the
# training stack (datasets, accelerate, matplotlib), Triton and the compiled extension come in only when
# used.
_LAZY_SUBMODULES = frozenset({"benchmarking", "cli", "demo", "ext", "info", "training", "triton"})


def __getattr__(name: str) -> object:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
