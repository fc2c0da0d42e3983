"""The ``ext`` backend of the public ops: what it runs, where it can run, and where it is picked.

Importing this module fails, with the reason, when the compiled extension is not built or does not load.

- ``select_gather``: the C++ / CUDA select-and-gather kernel (no sort: O(N) selection per row on the
  CPU, a rank count per position on the GPU, then a copy of the kept rows).
- ``attention_with_significance``: on the CPU, the fused C++ kernel
  ``powerbert::attention_significance_cpu`` (one task pool call per call; per task of (batch row,
  head, block of query rows) two BLAS GEMMs and the softmax and significance votes of the block in
  between, reading the projections' strided q/k/v in place). On CUDA, attention computed with PyTorch
  as the reference does (fp32 scores, softmax and probs @ v, block by block over query rows with the
  reference's memory bound), with the significance of each block of probabilities from
  ``powerbert::significance_from_probs`` (one read of the block, no vote matrix, the diagonal left out
  in the same pass): what a GPU without fused Triton attention (before Volta) runs.

- ``dense`` (an optional fusion, CPU float32 inference only): ``powerbert::dense_cpu``, an encoder
  layer's dense layers with their bias, GELU, residual and LayerNorm in one call: tasks of (block of
  rows, block of output columns), each a sequential BLAS GEMM and the epilogue of its block, the
  LayerNorm of a row block done by whichever task completes its last column block.

The CPU kernels run their tasks on the extension's own thread pool (``csrc/powerbert/task_pool.h``), not
in OpenMP regions: the caller returns when the tasks are done, without a barrier that waits for a thread
the OS has descheduled, so a patched model on a machine busy with other processes does not get slower
with more threads.

Where it is picked automatically: on CUDA whenever the kernels were built for the GPU (after Triton in
the dispatch order, so on GPUs Triton cannot serve); on the CPU for both ops. Select-and-gather measured
4-10x faster than the reference (benchmarks/results/ext_cpu.md). The fused attention does the
reference's GEMMs and softmax with none of its work around them: no fp32 layout copies of q, k and v,
no bias tensor, one task pool call instead of four parallel regions per block of query rows (each a
wake-up and a barrier that waits for the slowest thread), and dynamic task assignment, so a thread
descheduled by another process holds the call up by one task only. Single-threaded it took less than half the
reference's CPU time at B=16, N=128 (about SDPA's, which computes no significance);
``benchmarks/profile_cpu.py`` shows the per-op times of whole forwards;
``benchmarks/test_bench_ext.py -k cpu_attention`` measures it against both.
"""

from __future__ import annotations

import functools
import math
from types import ModuleType

import torch

from ..ops._imports import when_imported
from ..ops.attention import blocked_attention
from ..ops.dense import dense_flops
from ..ops.dispatch import OpBackend, OpInputs
from . import LOAD_ERROR, build_info

if LOAD_ERROR is not None:
    raise ImportError(LOAD_ERROR)

_BUILD = build_info()
DETAIL = "C++ CPU kernels" + (f"; CUDA kernels for {_BUILD['cuda_archs']}" if _BUILD["cuda"] else "; no CUDA kernels")


def stale_build_reason(kernel: str) -> str:
    """Why a kernel is missing from a loaded extension built from older sources."""
    return (
        f"the loaded extension has no {kernel}: it was built from older sources; rebuild it with "
        "`pip install --no-build-isolation -e .`"
    )


STALE_BUILD_REASON = stale_build_reason("fused CPU attention (powerbert::attention_significance_cpu)")


def has_cpu_attention() -> bool:
    """Whether the loaded extension registers the fused CPU attention (a build from older sources does not)."""
    return hasattr(torch.ops.powerbert, "attention_significance_cpu")


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


class ExtBackend(OpBackend):
    """What both ``ext`` implementations support: the CPU, and CUDA devices the kernels were built for."""

    name = "ext"

    @classmethod
    def not_supported_reasons(cls, inputs: OpInputs) -> list[str]:
        reasons = super().not_supported_reasons(inputs)
        device = inputs.device
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            reasons.extend(_cuda_device_reasons(index))
        return reasons


class ExtAttention(ExtBackend):
    """The fused C++ attention on the CPU; on CUDA, PyTorch attention with the significance from the
    extension (one read of each block of probabilities)."""

    op = "attention_with_significance"

    @classmethod
    def not_supported_reasons(cls, inputs: OpInputs) -> list[str]:
        reasons = super().not_supported_reasons(inputs)
        if inputs.device.type == "cpu" and not has_cpu_attention():
            reasons.append(STALE_BUILD_REASON)
        return reasons

    @staticmethod
    def apply(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor,
        scale: float,
        exclude_self: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention with significance: the fused C++ kernel on the CPU; on CUDA, PyTorch attention with
        the extension's significance.

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
        mask = key_padding_mask.contiguous()

        def column_sums(probs: torch.Tensor, start: int) -> torch.Tensor:
            # One read of the block: masked column sums over heads and real rows, diagonal left out.
            return torch.ops.powerbert.significance_from_probs(probs, mask, start, exclude_self)

        # The reference's blocked attention (same operands, padding bias and memory bound), with the
        # column sums done by the extension.
        return blocked_attention(q, k, v, key_padding_mask, scale, column_sums)


class ExtSelectGather(ExtBackend):
    """The C++ / CUDA select-and-gather kernel."""

    op = "select_gather"

    @staticmethod
    def apply(
        hidden: torch.Tensor, significance: torch.Tensor, mask: torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shapes as :func:`powerbert_kernels.ops.select_gather_ref`."""
        return torch.ops.powerbert.select_gather_ext(hidden, significance, mask, keep)


def has_cpu_dense() -> bool:
    """Whether the loaded extension registers the fused CPU dense layer (a build from older sources does not)."""
    return hasattr(torch.ops.powerbert, "dense_cpu")


class ExtDense(ExtBackend):
    """The fused CPU dense layer (``powerbert::dense_cpu``): GEMMs and epilogue in one task pool call."""

    op = "dense"
    devices = frozenset({"cpu"})
    dtypes = (torch.float32,)

    @classmethod
    def not_supported_reasons(cls, inputs: OpInputs) -> list[str]:
        reasons = super().not_supported_reasons(inputs)
        if getattr(inputs, "needs_grad", False):
            reasons.append("it has no backward pass (gradients are needed)")
        if inputs.device.type == "cpu" and not has_cpu_dense():
            reasons.append(stale_build_reason("fused CPU dense layer (powerbert::dense_cpu)"))
        return reasons

    @staticmethod
    def apply(
        hidden: torch.Tensor,
        weights: list[torch.Tensor],
        biases: list[torch.Tensor | None],
        activation: str,
        residual: torch.Tensor | None,
        norm_weight: torch.Tensor | None,
        norm_bias: torch.Tensor | None,
        eps: float,
    ) -> list[torch.Tensor]:
        """Shapes as :func:`powerbert_kernels.ops.dense_ref`; the outputs are views of one buffer."""
        out = torch.ops.powerbert.dense_cpu(hidden, weights, biases, activation, residual, norm_weight, norm_bias, eps)
        if len(weights) == 1:
            return [out]
        return list(out.split([w.shape[0] for w in weights], dim=-1))


def _register_flop_formula(flop_counter: ModuleType) -> None:
    # PyTorch's FLOP counter counts the GEMMs of the composition; the fused op counts the same.
    @flop_counter.register_flop_formula(torch.ops.powerbert.dense_cpu)
    def _(x_shape, weight_shapes, *args, out_shape=None, **kwargs) -> int:
        rows = math.prod(x_shape[:-1])
        return dense_flops(rows, x_shape[-1], sum(shape[0] for shape in weight_shapes))


if has_cpu_dense():
    when_imported("torch.utils.flop_counter", _register_flop_formula)

IMPLEMENTATIONS = (ExtAttention, ExtSelectGather, ExtDense)
