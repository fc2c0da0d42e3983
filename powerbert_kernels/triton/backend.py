"""The ``triton`` backend of the public ops: the fused Triton kernels, and where they can run.

Automatic dispatch picks them on CUDA GPUs that the installed Triton supports. Under
``TRITON_INTERPRET=1`` (set before this backend is loaded, i.e. before the first op call) they run on
CPU tensors in Triton's interpreter, but only when forced: exact, and far too slow to be picked.
Importing this module fails, with the reason, when Triton is missing or broken.
"""

from __future__ import annotations

try:
    import triton
except Exception as exc:  # not installed, or a build that fails on import
    raise ImportError(f"Triton is not usable: {type(exc).__name__}: {exc}") from exc

import torch

from ..ops.dispatch import OpBackend, OpInputs, compute_capability
from ._common import MAX_HEAD_DIM, MAX_SEQ_LEN, interpreting, min_capability
from .attention_significance import attention_with_significance_triton
from .select_gather import select_gather_triton

DETAIL = (
    "Triton's CPU interpreter, only when forced"
    if interpreting()
    else f"Triton {triton.__version__}, CUDA compute capability {'.'.join(map(str, min_capability()))}+"
)


class TritonBackend(OpBackend):
    """What both Triton implementations support.

    Compiled, they run on CUDA devices of at least :func:`~._common.min_capability`: Triton 3.3 dropped
    pre-Ampere tensor-core code generation, and older GPUs are served by the compiled extension. In the
    interpreter they run on any tensor, only when forced.
    """

    name = "triton"
    devices = frozenset({"cpu", "cuda"}) if interpreting() else frozenset({"cuda"})
    min_compute_capability = None if interpreting() else min_capability()
    capability_note = (
        f"the oldest Triton {triton.__version__} supports (Triton 3.3 dropped pre-Ampere tensor-core code "
        "generation); the compiled extension serves older GPUs"
    )
    forced_only = interpreting()
    forced_only_reason = (
        "Triton would run in its CPU interpreter (TRITON_INTERPRET=1), which is exact but far too "
        "slow to be chosen automatically; force it with backend='triton' or POWERBERT_BACKEND=triton"
    )

    @classmethod
    def not_supported_reasons(cls, inputs: OpInputs) -> list[str]:
        reasons = super().not_supported_reasons(inputs)
        device = inputs.device
        if device.type == "cpu" and not interpreting():
            reasons.append(
                "TRITON_INTERPRET=1, set before the first op call, runs the kernels on the CPU in Triton's interpreter"
            )
        if device.type == "cuda" and not interpreting():
            if torch.version.hip is not None:
                reasons.append("the Triton kernels are not validated on ROCm GPUs")
            elif inputs.dtype == torch.bfloat16 and compute_capability(device) < (8, 0):
                cap = compute_capability(device)
                reasons.append(f"bfloat16 needs compute capability 8.0 or newer, got {cap[0]}.{cap[1]}")
        return reasons


class TritonAttention(TritonBackend):
    """Fused attention + significance, flash-style (never writes the B x H x N x N probabilities)."""

    op = "attention_with_significance"
    max_head_dim = MAX_HEAD_DIM

    @classmethod
    def not_supported_reasons(cls, inputs: OpInputs) -> list[str]:
        reasons = super().not_supported_reasons(inputs)
        if interpreting() and inputs.dtype == torch.bfloat16:
            # The interpreter stores bfloat16 as raw 16-bit integers and its tl.dot multiplies those bit
            # patterns; upstream documents bfloat16 arithmetic as unsupported there.
            reasons.append("Triton's CPU interpreter does not support bfloat16 matrix products")
        return reasons

    apply = staticmethod(attention_with_significance_triton)


class TritonSelectGather(TritonBackend):
    """Rank-based selection (no sort) and a tiled gather of the kept vectors."""

    op = "select_gather"
    max_seq_len = MAX_SEQ_LEN

    apply = staticmethod(select_gather_triton)


IMPLEMENTATIONS = (TritonAttention, TritonSelectGather)
