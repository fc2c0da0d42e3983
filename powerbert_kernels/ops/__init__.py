"""The PoWER-BERT ops: attention with significance, and select-and-gather.

Each op has a pure-PyTorch reference (``*_ref``) beside a public function that checks its arguments and
dispatches to the fastest backend that can run the call (see :mod:`._dispatch`). All of them are torch
custom ops in the ``powerbert`` namespace, with fake implementations for ``torch.compile``.
"""

from . import _backends  # noqa: F401  (registers the Triton and extension backends that can load)
from ._dispatch import (
    BACKENDS,
    ENV_VAR,
    BackendUnavailableError,
    CallFacts,
    explain,
    registered_backends,
    resolve,
)
from .attention import attention, attention_with_significance, attention_with_significance_ref
from .local_attention import local_attention, local_attention_mask, local_attention_with_significance
from .select_gather import cls_positions, select_gather, select_gather_ref, selection_order

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "BackendUnavailableError",
    "CallFacts",
    "attention",
    "attention_with_significance",
    "attention_with_significance_ref",
    "cls_positions",
    "explain",
    "local_attention",
    "local_attention_mask",
    "local_attention_with_significance",
    "registered_backends",
    "resolve",
    "select_gather",
    "select_gather_ref",
    "selection_order",
]
