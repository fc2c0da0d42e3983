"""Limits of the Triton kernels, and small helpers their launchers share."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

MAX_SEQ_LEN = 1 << 20
"""Longest row select-gather can order (its sort key holds 20 bits of position)."""

MAX_HEAD_DIM = 256
"""Largest head dimension the attention kernels take (padded to a power of two; the output
accumulator of a query tile, BLOCK_M x d in fp32, has to stay in registers)."""


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch as a launcher makes it: the single source of its compile-time parameters.

    The launchers run exactly these (``kernel[grid](*runtime_args, **constexprs, num_warps=...,
    num_stages=...)``) and :mod:`.codegen` compiles exactly these for its register and spill check.
    """

    name: str
    kernel: object
    """The ``triton.jit`` function."""
    grid: tuple[int, ...]
    constexprs: dict[str, object] = field(default_factory=dict)
    """Tile sizes, dot precision, scan block and flags, by the kernel's argument names."""
    num_warps: int = 4
    num_stages: int = 3

    def launch(self, *args: object) -> None:
        """Launch on ``args``, the kernel's runtime arguments in order."""
        self.kernel[self.grid](*args, **self.constexprs, num_warps=self.num_warps, num_stages=self.num_stages)


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
