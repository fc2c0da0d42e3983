"""The compiled C++/CUDA extension (``powerbert_kernels._C``): the ``ext`` backend of the ops.

The extension registers two torch operators in the ``powerbert`` namespace, with C++ CPU kernels and,
when built with a CUDA toolkit, CUDA kernels that run on every GPU from the Kepler K80 (sm_37) on:

- ``powerbert::significance_from_probs(probs, mask, q_offset=0, exclude_self=False)``: PoWER-BERT's
  significance from a materialised block of attention probabilities;
- ``powerbert::select_gather_ext(hidden, significance, mask, keep)``: select-and-gather with the
  semantics of :func:`powerbert_kernels.ops.select_gather_ref`;

and two CPU-only ones:

- ``powerbert::attention_significance_cpu(q, k, v, mask, scale, exclude_self)``: fused multi-head
  attention with significance (the semantics of
  :func:`powerbert_kernels.ops.attention_with_significance_ref`), one task pool call per call;
- ``powerbert::dense_cpu(x, weights, biases, activation, residual, norm_weight, norm_bias, eps)``: dense
  layers with their bias, GELU, residual and LayerNorm (the semantics of
  :func:`powerbert_kernels.ops.dense_ref`), float32.

They are kernels, not public ops: :mod:`.backend` runs them as the ``ext`` implementations of
``powerbert::attention_with_significance`` and ``powerbert::select_gather``, whose fake and autograd
formulas are the ops' own, and of the optional ``dense`` fusion. Importing this package never fails:
without a built extension, :data:`LOAD_ERROR` says why, and the dispatcher reports it when ``ext`` is
asked for.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

_MODULE = "powerbert_kernels._C"
_C = None
LOAD_ERROR: str | None = None
"""Why ``powerbert_kernels._C`` could not be loaded (None when it is loaded)."""

if importlib.util.find_spec(_MODULE) is None:
    LOAD_ERROR = (
        f"{_MODULE} is not built; build it with a C++ compiler and PyTorch present: "
        "`pip install --no-build-isolation -e .` (see docs/ext.md)"
    )
else:
    try:
        _C = importlib.import_module(_MODULE)
    except ImportError as exc:  # typically built against another PyTorch (undefined symbols)
        LOAD_ERROR = (
            f"{_MODULE} failed to load ({exc}); rebuild it against the installed PyTorch "
            f"{torch.__version__}: `pip install --no-build-isolation -e .`"
        )

if _C is not None:

    @torch.library.register_fake("powerbert::significance_from_probs")
    def _significance_from_probs_fake(
        probs: torch.Tensor, mask: torch.Tensor, q_offset: int = 0, exclude_self: bool = False
    ) -> torch.Tensor:
        torch._check(probs.dim() == 4, lambda: f"probs must have shape (B, H, n_q, N), got {tuple(probs.shape)}")
        return probs.new_empty(probs.shape[0], probs.shape[3], dtype=torch.float32)

    # Significance is a masked sum of probabilities, so its gradient is the incoming gradient broadcast
    # back over heads and voting rows (the diagonal left out when exclude_self).
    def _significance_setup_context(ctx, inputs, output) -> None:
        probs, mask, q_offset, exclude_self = inputs
        ctx.save_for_backward(mask)
        ctx.probs_shape = probs.shape
        ctx.probs_dtype = probs.dtype
        ctx.q_offset = q_offset
        ctx.exclude_self = exclude_self

    def _significance_backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        B, H, n_q, N = ctx.probs_shape
        votes = mask[:, ctx.q_offset : ctx.q_offset + n_q].to(grad.dtype)
        grad_probs = votes[:, None, :, None] * grad[:, None, None, :]  # (B, 1, n_q, N)
        if ctx.exclude_self:
            torch.diagonal(grad_probs, offset=ctx.q_offset, dim1=-2, dim2=-1).zero_()
        return grad_probs.expand(B, H, n_q, N).to(ctx.probs_dtype), None, None, None

    torch.library.register_autograd(
        "powerbert::significance_from_probs", _significance_backward, setup_context=_significance_setup_context
    )


def is_loaded() -> bool:
    """Whether the compiled extension is loaded (its operators are registered)."""
    return _C is not None


def build_info() -> dict[str, object]:
    """How the extension was built: ``loaded``, ``error``, ``cpu`` and ``cuda`` (kernels present) and
    ``cuda_archs`` (the architectures the CUDA kernels were compiled for, e.g. ``"sm_37+sm_60"``)."""
    with_cuda = bool(getattr(_C, "WITH_CUDA", 0))
    return {
        "loaded": _C is not None,
        "error": LOAD_ERROR,
        "cpu": _C is not None,
        "cuda": with_cuda,
        "cuda_archs": getattr(_C, "CUDA_ARCHS", "") if with_cuda else "",
    }


def _require() -> None:
    if _C is None:
        raise RuntimeError(LOAD_ERROR)


def significance_from_probs(
    probs: torch.Tensor, mask: torch.Tensor, q_offset: int = 0, exclude_self: bool = False
) -> torch.Tensor:
    """Significance contributed by a block of query rows of materialised attention probabilities.

    ``out[b, w] = sum_h sum_{q : mask[b, q_offset + q]} probs[b, h, q, w]``, without the terms
    ``w == q_offset + q`` when ``exclude_self``. Summing the results over consecutive blocks that
    cover all N rows gives the significance of
    :func:`~powerbert_kernels.ops.attention_with_significance_ref`.

    Args:
        probs: (B, H, n_q, N) float32, float16 or bfloat16, contiguous in its last dimension: the
            probabilities of query rows ``q_offset .. q_offset + n_q - 1``.
        mask: (B, N) bool, True = real token.
        q_offset: position of the block's first query row.
        exclude_self: leave each vector's attention to itself out.

    Returns:
        (B, N) float32, accumulated in float32.
    """
    _require()
    return torch.ops.powerbert.significance_from_probs(probs, mask, int(q_offset), bool(exclude_self))


def select_gather_ext(
    hidden: torch.Tensor, significance: torch.Tensor, mask: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The extension's select-and-gather kernel (same semantics and results as
    :func:`~powerbert_kernels.ops.select_gather_ref`).

    The bare kernel, without autograd or a fake implementation: differentiate or compile
    :func:`powerbert_kernels.ops.select_gather` with ``backend="ext"`` instead.

    Args:
        hidden: (B, N, D) float32, float16 or bfloat16, contiguous in its last dimension.
        significance: (B, N) float32.
        mask: (B, N) bool, True = real token.
        keep: vectors kept per row, 1 <= keep <= N.

    Returns:
        hidden_kept (B, keep, D), mask_kept (B, keep) bool, indices (B, keep) int64 ascending.
    """
    _require()
    return torch.ops.powerbert.select_gather_ext(hidden, significance, mask, int(keep))


__all__ = [
    "LOAD_ERROR",
    "build_info",
    "is_loaded",
    "select_gather_ext",
    "significance_from_probs",
]
