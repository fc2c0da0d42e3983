"""The ``ext`` backend of the public ops: what it runs, where it can run, and where it is picked.

- ``select_gather``: the C++ / CUDA select-and-gather kernel (no sort: O(N) selection per row on the
  CPU, a rank count per position on the GPU, then a copy of the kept rows).
- ``attention_with_significance``: on the CPU, the fused C++ kernel ``powerbert::attention_significance_cpu``
  (one parallel region per call; per task of (batch row, head, block of query rows) two BLAS GEMMs and
  the softmax and significance votes of the block in between, reading the projections' strided q/k/v
  in place). On CUDA, attention computed with PyTorch as the reference does (fp32 scores, softmax and
  probs @ v, block by block over query rows with the reference's memory bound), with the significance
  of each block of probabilities from ``powerbert::significance_from_probs``: what a GPU without fused
  Triton attention (before Volta) runs.

Where it is picked automatically: on CUDA whenever the kernels were built for the GPU (after Triton in
the dispatch order, so on GPUs Triton cannot serve); on the CPU for both ops. Select-and-gather measured
4-10x faster than the reference (benchmarks/results/ext_cpu.md). The fused attention does the
reference's GEMMs and softmax with none of its per-call work around them: no fp32 layout copies of q, k
and v, no bias tensor, one parallel region per call instead of four per block of query rows (each a
wake-up and a barrier that waits for the slowest thread), and dynamic task assignment, so a thread
descheduled by another process holds the call up by one task only.
"""

from __future__ import annotations

import functools

import torch

from ..ops import _dispatch
from ..ops._checks import FLOAT_DTYPES


def attention_with_significance_ext(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    scale: float,
    exclude_self: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with significance: the fused C++ kernel on the CPU; on CUDA PyTorch attention with the
    extension's significance.

    Args:
        q, k, v: (B, N, H, d) float, last dimension contiguous.
        key_padding_mask: (B, N) bool, True = real token.
        scale: score scale.
        exclude_self: leave each vector's attention to itself out of its significance.

    Returns:
        out (B, N, H*d) in the dtype of ``q``; significance (B, N) float32.
    """
    if q.device.type == "cpu":
        return torch.ops.powerbert.attention_significance_cpu(q, k, v, key_padding_mask, scale, exclude_self)
    from ..ops.attention import blocked_attention

    mask = key_padding_mask.contiguous()

    def column_sums(probs: torch.Tensor, start: int) -> torch.Tensor:
        # One read of the block: masked column sums over heads and real rows, diagonal left out.
        return torch.ops.powerbert.significance_from_probs(probs, mask, start, exclude_self)

    # The reference's blocked attention (same operands, padding bias and memory bound), with the column
    # sums done by the extension.
    return blocked_attention(q, k, v, key_padding_mask, scale, column_sums)


def select_gather_ext(
    hidden: torch.Tensor, significance: torch.Tensor, mask: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The extension's select-and-gather. Shapes as :func:`powerbert_kernels.ops.select_gather_ref`."""
    return torch.ops.powerbert.select_gather_ext(hidden, significance, mask, keep)


@functools.cache
def _cuda_device_reasons(index: int) -> tuple[str, ...]:
    from .. import _C

    if not getattr(_C, "WITH_CUDA", 0):
        return (
            "the extension was built without CUDA kernels (rebuild it with a CUDA toolkit and a CUDA "
            "PyTorch, see docs/ext.md)",
        )
    error = _C.cuda_kernel_error(index)
    if error is None:
        return ()
    major, minor = torch.cuda.get_device_capability(index)
    return (
        f"its CUDA kernels (built for {_C.CUDA_ARCHS}) cannot run on {torch.cuda.get_device_name(index)} "
        f'(sm_{major}{minor}): {error}; rebuild with TORCH_CUDA_ARCH_LIST="{major}.{minor}"',
    )


def _unsupported(facts: _dispatch.CallFacts) -> list[str]:
    reasons = []
    if facts.dtype not in FLOAT_DTYPES:
        reasons.append(f"dtype {facts.dtype} is not supported (float16, bfloat16 or float32)")
    device = facts.device
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        reasons.extend(_cuda_device_reasons(index))
    elif device.type != "cpu":
        reasons.append(f"it has no {device.type} kernels (CPU and CUDA only)")
    return reasons


def _always_automatic(facts: _dispatch.CallFacts) -> list[str]:
    return []


def register() -> None:
    """Register the ``ext`` implementations with the dispatcher."""
    _dispatch.register(
        "attention_with_significance", "ext", attention_with_significance_ext, _unsupported, _always_automatic
    )
    _dispatch.register("select_gather", "ext", select_gather_ext, _unsupported, _always_automatic)
