"""Micro-benchmarks of select-gather: reference / triton / ext, and a device-to-device copy of the same
bytes as the bandwidth yardstick.

Run on a GPU with ``pytest benchmarks/test_bench_select_gather.py``. ``extra_info`` holds the CUDA-event
median (do_bench), the achieved GB/s (kept rows read and written) and the peak memory.
"""

from __future__ import annotations

import pytest
import torch
from _measure import (
    PROVIDERS,
    SELECT_GATHER_OP,
    median_ms,
    peak_mib,
    provider_available,
    select_gather_fn,
    select_gather_inputs,
    synchronized,
)

from powerbert_kernels.triton.select_gather import gather_bytes

HIDDEN = 768


@pytest.mark.gpu
@pytest.mark.parametrize("provider", [*PROVIDERS, "copy"])
@pytest.mark.parametrize("N", [64, 128, 256, 512, 1024])
@pytest.mark.parametrize("B", [1, 32, 128])
def test_select_gather(benchmark, provider, B, N):
    keep = N // 2
    if provider == "copy":
        src = torch.randn(B, keep, HIDDEN, device="cuda", dtype=torch.float16)
        dst = torch.empty_like(src)
        fn = lambda: dst.copy_(src)  # noqa: E731
    else:
        why = provider_available(SELECT_GATHER_OP, provider)
        if why:
            pytest.skip(why)
        hidden, significance, mask = select_gather_inputs(B, N, HIDDEN, torch.float16)
        fn = select_gather_fn(provider, hidden, significance, mask, keep)
    ms = median_ms(fn)
    benchmark.group = f"select_gather B={B} N={N} keep={keep} D={HIDDEN} fp16"
    benchmark.extra_info.update(
        median_ms=ms, gbps=gather_bytes(B, keep, HIDDEN, 2) / (ms * 1e-3) / 1e9, peak_mib=peak_mib(fn)
    )
    benchmark.pedantic(synchronized(fn), rounds=20, warmup_rounds=3, iterations=1)
