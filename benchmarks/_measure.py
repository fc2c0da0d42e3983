"""Inputs, providers and GPU timing shared by the kernel micro-benchmarks and ``gpu_sweep.py``.

Kernel times are medians of ``triton.testing.do_bench`` (CUDA events, warm-up, L2 flushed between
runs); inputs are random, never zeros; peak memory is the allocator's peak above what was allocated
before one call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from powerbert_kernels import ops
from powerbert_kernels.ops import attention_flops
from powerbert_kernels.triton.select_gather import gather_bytes

ATTENTION_OP = "attention_with_significance"
SELECT_GATHER_OP = "select_gather"
PROVIDERS = ("torch", "triton", "ext")
"""The backends compared, each called through the public op as a user gets it."""
DEVICE = torch.device("cuda")
"""Where inputs are made (a CPU dry run of the sweep's code paths may switch it)."""


def provider_available(op: str, provider: str) -> str | None:
    """Why ``provider`` cannot run ``op`` here (None: it can)."""
    if provider not in ops.registered_backends(op):
        return f"backend {provider!r} is not registered for {op}"
    return None


def attention_inputs(
    batch: int,
    seq_len: int,
    heads: int = 12,
    head_dim: int = 64,
    dtype: torch.dtype = torch.float16,
    real_fraction: float = 1.0,
    seed: int = 0,
):
    """q, k, v (B, N, H, d) as views of one fused projection output (as the model makes them) and a
    (B, N) mask with the first ``real_fraction`` of every row real."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(batch, seq_len, 3 * heads * head_dim, device=DEVICE, dtype=dtype, generator=g)
    q, k, v = (t.view(batch, seq_len, heads, head_dim) for t in x.split(heads * head_dim, dim=-1))
    mask = torch.zeros(batch, seq_len, dtype=torch.bool, device=DEVICE)
    mask[:, : max(1, round(real_fraction * seq_len))] = True
    return q, k, v, mask


def attention_fn(provider: str, q, k, v, mask) -> Callable[[], object]:
    return lambda: ops.attention_with_significance(q, k, v, mask, backend=provider)


def select_gather_inputs(
    batch: int, seq_len: int, hidden_size: int = 768, dtype: torch.dtype = torch.float16, seed: int = 0
):
    """hidden (B, N, D), significance (B, N) with distinct values, mask (B, N) all real."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    hidden = torch.randn(batch, seq_len, hidden_size, device=DEVICE, dtype=dtype, generator=g)
    significance = torch.rand(batch, seq_len, device=DEVICE, generator=g) + 0.5
    mask = torch.ones(batch, seq_len, dtype=torch.bool, device=DEVICE)
    return hidden, significance, mask


def select_gather_fn(provider: str, hidden, significance, mask, keep: int) -> Callable[[], object]:
    return lambda: ops.select_gather(hidden, significance, mask, keep, backend=provider)


def median_ms(fn: Callable[[], object], warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds per call (CUDA events, L2 flushed between calls)."""
    if DEVICE.type != "cuda":
        return _median_wall_ms(fn)
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def _median_wall_ms(fn: Callable[[], object], repeats: int = 3) -> float:
    # Off the GPU only a dry run of the code paths makes sense: a few wall-clock calls.
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak memory allocated during one call of ``fn`` above what was allocated before it, in MiB."""
    if DEVICE.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    del result
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def synchronized(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` followed by a device synchronisation, for wall-clock timers such as pytest-benchmark's."""

    def call() -> None:
        fn()
        torch.cuda.synchronize(DEVICE)

    return call


def measure_attention(
    provider: str, batch: int, seq_len: int, heads: int = 12, head_dim: int = 64, dtype: torch.dtype = torch.float16
) -> dict[str, object]:
    """Median time, achieved TFLOP/s (plain attention's 4*B*H*N^2*d) and peak memory of one provider."""
    q, k, v, mask = attention_inputs(batch, seq_len, heads, head_dim, dtype)
    fn = attention_fn(provider, q, k, v, mask)
    ms = median_ms(fn)
    return {
        "provider": provider,
        "B": batch,
        "N": seq_len,
        "H": heads,
        "d": head_dim,
        "dtype": str(dtype)[6:],
        "ms": ms,
        "tflops": attention_flops(batch, seq_len, heads, head_dim) / (ms * 1e-3) / 1e12,
        "peak_mib": peak_mib(fn),
    }


def measure_select_gather(
    provider: str, batch: int, seq_len: int, keep: int, hidden_size: int = 768, dtype: torch.dtype = torch.float16
) -> dict[str, object]:
    """Median time, achieved GB/s (kept rows read + written) and peak memory of one provider."""
    hidden, significance, mask = select_gather_inputs(batch, seq_len, hidden_size, dtype)
    fn = select_gather_fn(provider, hidden, significance, mask, keep)
    ms = median_ms(fn)
    moved = gather_bytes(batch, keep, hidden_size, hidden.element_size())
    return {
        "provider": provider,
        "B": batch,
        "N": seq_len,
        "D": hidden_size,
        "keep": keep,
        "dtype": str(dtype)[6:],
        "ms": ms,
        "gbps": moved / (ms * 1e-3) / 1e9,
        "peak_mib": peak_mib(fn),
    }


def copy_gbps(batch: int, keep: int, hidden_size: int, dtype: torch.dtype = torch.float16) -> dict[str, float]:
    """Device-to-device copy of the same bytes select-gather moves: the bandwidth yardstick."""
    src = torch.randn(batch, keep, hidden_size, device=DEVICE, dtype=dtype)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return {"ms": ms, "gbps": gather_bytes(batch, keep, hidden_size, src.element_size()) / (ms * 1e-3) / 1e9}
