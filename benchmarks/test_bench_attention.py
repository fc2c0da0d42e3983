"""Micro-benchmarks of attention with significance: torch / triton / ext.

Run on a GPU with ``pytest benchmarks/test_bench_attention.py``. pytest-benchmark's own timer wraps a
synchronised call; ``extra_info`` holds the CUDA-event median (do_bench), the achieved TFLOP/s (plain
attention's 4*B*H*N^2*d FLOPs, so the significance pass shows as lost throughput) and the peak memory.
"""

from __future__ import annotations

import pytest
import torch
from _measure import (
    ATTENTION_OP,
    PROVIDERS,
    attention_fn,
    attention_inputs,
    median_ms,
    peak_mib,
    provider_available,
    synchronized,
)

from powerbert_kernels.ops import attention_flops

H, D = 12, 64


@pytest.mark.gpu
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("N", [64, 128, 256, 512, 1024])
@pytest.mark.parametrize("B", [1, 32, 128])
def test_attention_with_significance(benchmark, provider, B, N):
    why = provider_available(ATTENTION_OP, provider)
    if why:
        pytest.skip(why)
    q, k, v, mask = attention_inputs(B, N, H, D, torch.float16)
    fn = attention_fn(provider, q, k, v, mask)
    ms = median_ms(fn)
    benchmark.group = f"attention B={B} N={N} H={H} d={D} fp16"
    benchmark.extra_info.update(
        median_ms=ms, tflops=attention_flops(B, N, H, D) / (ms * 1e-3) / 1e12, peak_mib=peak_mib(fn)
    )
    benchmark.pedantic(synchronized(fn), rounds=20, warmup_rounds=3, iterations=1)
