"""Triton kernels for the PoWER-BERT ops (one file per kernel).

- :mod:`.attention_significance`: fused attention + significance (flash-style, never writes the
  B x H x N x N probabilities);
- :mod:`.select_gather`: rank-based selection (no sort) and gather of the kept vectors.

:func:`register` hands both to the ops dispatcher: automatic dispatch picks them on CUDA GPUs that the
installed Triton supports; under ``TRITON_INTERPRET=1`` they run on CPU tensors, but only when forced.
"""

from __future__ import annotations


def register() -> None:
    """Register the Triton implementations with the ops dispatcher."""
    from ..ops import _dispatch
    from ..ops.attention import OP as ATTENTION_OP
    from ..ops.select_gather import OP as SELECT_GATHER_OP
    from ._common import not_automatic, unsupported_attention, unsupported_select_gather
    from .attention_significance import attention_with_significance_triton
    from .select_gather import select_gather_triton

    _dispatch.register(ATTENTION_OP, "triton", attention_with_significance_triton, unsupported_attention, not_automatic)
    _dispatch.register(SELECT_GATHER_OP, "triton", select_gather_triton, unsupported_select_gather, not_automatic)
