"""The PoWER-BERT ops: attention with significance, select-and-gather, and the fused dense layers around them.

Each op has one home, its module here: the pure-PyTorch reference (``*_ref``), the public function that
checks its arguments, and the one torch custom op in the ``powerbert`` namespace (fake implementation,
autograd formula, FLOP formula) whose body runs the backend the dispatcher picked (see :mod:`.dispatch`).
The backends (:mod:`.torch_backend`, :mod:`powerbert_kernels.triton.backend`,
:mod:`powerbert_kernels.ext.backend`) are implementations behind those ops, imported on first use.
The dense layers (:mod:`.dense`) are an optional fusion: their reference is the Hugging Face modules'
plain composition, and only the ``ext`` backend fuses them (on the CPU).
Local (sliding-window) attention in original positions (:mod:`.local_attention`, for ModernBERT's local
layers) exists only in pure PyTorch and is plain differentiable PyTorch, not a dispatched custom op.
"""

from .attention import attention, attention_flops, attention_with_significance, attention_with_significance_ref
from .dense import dense, dense_flops, dense_projections, dense_ref
from .dispatch import (
    BACKENDS,
    ENV_VAR,
    AttentionInputs,
    BackendUnavailableError,
    OpBackend,
    OpInputs,
    SelectGatherInputs,
    available_backends,
    backend_report,
    explain,
    missing_reason,
    registered_backends,
    resolve,
)
from .local_attention import local_attention, local_attention_mask, local_attention_with_significance
from .select_gather import cls_positions, preference_key, select_gather, select_gather_ref, selection_order

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "AttentionInputs",
    "BackendUnavailableError",
    "OpBackend",
    "OpInputs",
    "SelectGatherInputs",
    "attention",
    "attention_flops",
    "attention_with_significance",
    "attention_with_significance_ref",
    "dense",
    "dense_flops",
    "dense_projections",
    "dense_ref",
    "available_backends",
    "backend_report",
    "cls_positions",
    "explain",
    "local_attention",
    "local_attention_mask",
    "local_attention_with_significance",
    "missing_reason",
    "preference_key",
    "registered_backends",
    "resolve",
    "select_gather",
    "select_gather_ref",
    "selection_order",
]
