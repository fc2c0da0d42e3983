"""PoWER-BERT: progressive word-vector elimination for fast BERT-family inference.

Quick start::

    from transformers import AutoModelForSequenceClassification
    from powerbert_kernels import apply_power_bert

    model = AutoModelForSequenceClassification.from_pretrained(path)
    apply_power_bert(model, retention=[76, 62, 55, 52, 42, 40, 36, 24, 17, 13, 11, 3])
    logits = model(**batch).logits

The names below load on first use (a module ``__getattr__``), so that importing the package, and the
``powerbert`` command's help, stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "BACKENDS": ".ops",
    "BackendUnavailableError": ".ops",
    "ExportError": ".export",
    "PowerBertModelOutput": ".models",
    "apply_power_bert": ".models",
    "available_backends": ".ops",
    "backend_report": ".ops",
    "export_onnx": ".export",
    "export_program": ".export",
    "flop_ratio": ".models",
    "from_pretrained": ".models",
    "is_patched": ".models",
    "model_flops": ".models",
    "remove_power_bert": ".models",
    "tune_retention": ".training.tune",
    "verify_onnx": ".export",
}
_SUBMODULES = ("export", "ext", "models", "ops", "training", "triton")

if TYPE_CHECKING:
    from . import ops
    from .export import ExportError, export_onnx, export_program, verify_onnx
    from .models import (
        PowerBertModelOutput,
        apply_power_bert,
        flop_ratio,
        from_pretrained,
        is_patched,
        model_flops,
        remove_power_bert,
    )
    from .ops import BACKENDS, BackendUnavailableError, available_backends, backend_report
    from .training.tune import tune_retention


def __getattr__(name: str) -> object:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "ExportError",
    "PowerBertModelOutput",
    "__version__",
    "apply_power_bert",
    "available_backends",
    "backend_report",
    "export_onnx",
    "export_program",
    "flop_ratio",
    "from_pretrained",
    "is_patched",
    "model_flops",
    "ops",
    "remove_power_bert",
    "tune_retention",
    "verify_onnx",
]
