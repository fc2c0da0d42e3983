"""End-to-end benchmarks: bert-base (random weights, fp16) stock with HF SDPA vs PoWER-BERT.

Run on a GPU with ``pytest benchmarks/test_bench_end_to_end.py``. Each provider is timed on its own here
(pytest-benchmark, synchronised calls); the interleaved comparison the targets are judged on is in
``gpu_sweep.py``. ``extra_info`` holds the theoretical FLOP ratio and the peak memory.
"""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from _measure import synchronized

from powerbert_kernels import apply_power_bert, flop_ratio
from powerbert_kernels import benchmarking as bm

RETENTION = [76, 62, 55, 52, 42, 40, 36, 24, 17, 13, 11, 3]


@pytest.fixture(scope="module")
def models():
    device = torch.device("cuda")
    baseline, power = bm.load_models(argparse.Namespace(model=None, config="bert-base"), device, torch.float16)
    return baseline, apply_power_bert(power, RETENTION)


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["hf_sdpa", "powerbert-triton", "powerbert-torch"])
@pytest.mark.parametrize("B, N", [(128, 128), (32, 512)])
def test_bert_base_forward(benchmark, models, provider, B, N, monkeypatch):
    baseline, power = models
    model = baseline if provider == "hf_sdpa" else power
    if provider != "hf_sdpa":
        monkeypatch.setenv("POWERBERT_BACKEND", provider.split("-")[1])
    inputs = bm.random_inputs(B, N, baseline.config.vocab_size, torch.device("cuda"))

    def forward():
        with torch.inference_mode():
            return model(**inputs)

    benchmark.group = f"bert-base fp16 B={B} N={N}"
    benchmark.extra_info.update(
        flop_ratio=flop_ratio(baseline, B, N, RETENTION),
        peak_mib=bm.peak_memory_mb(forward, torch.device("cuda")),
        backend=os.environ.get("POWERBERT_BACKEND", "auto"),
    )
    benchmark.pedantic(synchronized(forward), rounds=10, warmup_rounds=2, iterations=1)
