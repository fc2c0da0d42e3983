"""What the Triton backend can run, and small helpers its launchers share."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import triton
import triton.language as tl

from ..ops._checks import FLOAT_DTYPES
from ..ops._dispatch import CallFacts

MAX_SEQ_LEN = 1 << 20
"""Longest row select-gather can order (its sort key holds 20 bits of position)."""

MAX_HEAD_DIM = 256
"""Largest head dimension the attention kernels take (padded to a power of two; the output
accumulator of a query tile, BLOCK_M x d in fp32, has to stay in registers)."""


@triton.jit
def _probe(X):
    tl.store(X, 0)


def _built_for_interpreter() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_probe, InterpretedFunction)


# ``triton.jit`` reads TRITON_INTERPRET when a kernel is defined, not when it runs, so the kernel objects
# (all defined at import, like ``_probe``), not the environment now, say how a launch will execute.
_INTERPRETING = _built_for_interpreter()


def interpreting() -> bool:
    """Whether this process's kernels run in Triton's CPU interpreter."""
    return _INTERPRETING


def _triton_version() -> tuple[int, int]:
    major, minor = triton.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def min_capability() -> tuple[int, int]:
    """Oldest CUDA compute capability the installed Triton supports.

    Triton 3.3 removed its pre-Ampere tensor-core code path (Volta's MMAv1; pull request #5066), leaving
    only a slow FMA fallback for ``tl.dot`` on sm_7x that upstream no longer tests, and its README has
    listed "NVIDIA GPUs (Compute Capability 8.0+)" since. Earlier 3.x releases support 7.0+ (Volta), the
    floor PyTorch itself checks before handing work to Triton. Older GPUs (Kepler, Maxwell, Pascal, and
    Volta/Turing with a recent Triton) are served by the compiled extension instead.
    """
    return (8, 0) if _triton_version() >= (3, 3) else (7, 0)


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _device_reasons(facts: CallFacts) -> list[str]:
    device = facts.device
    if device.type == "cpu":
        if interpreting():
            return []
        return [
            "Triton kernels run on CUDA devices only, got a CPU tensor "
            "(TRITON_INTERPRET=1, set before the package is imported, runs them in Triton's CPU interpreter)"
        ]
    if device.type != "cuda":
        return [f"Triton kernels run on CUDA devices only, got {device.type}"]
    if interpreting():
        return []
    if torch.version.hip is not None:
        return ["the Triton kernels are not validated on ROCm GPUs"]
    reasons = []
    cap = _capability(device.index if device.index is not None else torch.cuda.current_device())
    floor = min_capability()
    if cap < floor:
        reasons.append(
            f"compute capability {cap[0]}.{cap[1]} is below {floor[0]}.{floor[1]}, the oldest Triton "
            f"{triton.__version__} supports (Triton 3.3 dropped pre-Ampere tensor-core code generation)"
        )
    if facts.dtype == torch.bfloat16 and cap < (8, 0):
        reasons.append(f"bfloat16 needs compute capability 8.0 or newer, got {cap[0]}.{cap[1]}")
    return reasons


def _dtype_reasons(facts: CallFacts) -> list[str]:
    if facts.dtype not in FLOAT_DTYPES:
        return [f"the Triton kernels take float16, bfloat16 or float32, got {facts.dtype}"]
    return []


def unsupported_attention(facts: CallFacts) -> list[str]:
    """Every reason the Triton attention kernels cannot run a call (empty: they can)."""
    reasons = _device_reasons(facts) + _dtype_reasons(facts)
    if interpreting() and facts.dtype == torch.bfloat16:
        # The interpreter stores bfloat16 as raw 16-bit integers and its tl.dot multiplies those bit
        # patterns; upstream documents bfloat16 arithmetic as unsupported there.
        reasons.append("Triton's CPU interpreter does not support bfloat16 matrix products")
    head_dim = facts.extra.get("head_dim")
    if isinstance(head_dim, int) and not 1 <= head_dim <= MAX_HEAD_DIM:
        reasons.append(f"head dim {head_dim} is outside the supported 1..{MAX_HEAD_DIM}")
    return reasons


def unsupported_select_gather(facts: CallFacts) -> list[str]:
    """Every reason the Triton select-and-gather kernels cannot run a call (empty: they can)."""
    reasons = _device_reasons(facts) + _dtype_reasons(facts)
    seq_len = facts.extra.get("seq_len")
    if isinstance(seq_len, int) and seq_len > MAX_SEQ_LEN:
        reasons.append(f"sequence length {seq_len} exceeds {MAX_SEQ_LEN}, the longest the kernel's sort key orders")
    return reasons


def not_automatic(facts: CallFacts) -> list[str]:
    """Reasons to use the Triton backend only when forced: its CPU interpreter is exact but very slow."""
    if interpreting():
        return [
            "Triton would run in its CPU interpreter (TRITON_INTERPRET=1), which is exact but far too "
            "slow to be chosen automatically; force it with backend='triton' or POWERBERT_BACKEND=triton"
        ]
    return []


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessor_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere: launch heuristics then change nothing)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@contextlib.contextmanager
def cuda_device_guard(device: torch.device) -> Iterator[None]:
    """Launch on ``device``: Triton launches on the current CUDA device, which may be another one."""
    if device.type == "cuda" and not interpreting():
        with torch.cuda.device(device):
            yield
    else:
        yield
