"""Benchmarks of the compiled extension (``ext``) against the PyTorch references.

CPU (wherever the extension is built):
- select-and-gather at B=32, N=512, D=768: at least 2x faster than ``select_gather_ref`` (topk-style
  sorts + gather), with no more peak memory;
- significance from materialised probabilities: at least as fast as the reference's column sums (the
  batched mat-vec and diagonal correction of ``attention_with_significance_ref``);
- the fused ext attention (``powerbert::attention_significance_cpu``) against the reference attention:
  at least as fast, with no more peak memory (what the CPU dispatcher's choice of ``ext`` rests on);
  the stock model's SDPA attention (no significance) is timed in the same run as the yardstick.

GPU (skipped without CUDA): significance from probabilities reads the probability tensor once at 70% or
more of the device-to-device copy bandwidth measured in the same run.

Ratios come from one interleaved run (reference and extension alternate call by call, so both see the
same machine load) and compare medians. Run with ``pytest benchmarks/test_bench_ext.py``; on a machine
without a GPU add ``--noconftest`` (the benchmarks' conftest skips everything there).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch

from powerbert_kernels import ext, ops
from powerbert_kernels.benchmarking import peak_memory_mb
from powerbert_kernels.ext.backend import ExtAttention
from powerbert_kernels.ops.attention import column_sums_ref

CUDA = torch.cuda.is_available()
ROUNDS = 41

pytestmark = pytest.mark.skipif(not ext.is_loaded(), reason=f"extension not built: {ext.LOAD_ERROR}")


def interleaved_times(
    fns: dict[str, Callable[[], object]], rounds: int = ROUNDS, warmup: int = 3
) -> dict[str, list[float]]:
    """Seconds per call of each function, calling them in turn (order alternating every round)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    items = list(fns.items())
    for r in range(rounds):
        for name, fn in items if r % 2 == 0 else items[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def compare(ref: Callable[[], object], cand: Callable[[], object], rounds: int = ROUNDS) -> dict[str, float]:
    """Medians (the ratio is asserted on) and minima (shown: on a shared machine they tell what the
    code can do when not interrupted) of reference and extension from one interleaved run."""
    times = interleaved_times({"torch": ref, "ext": cand}, rounds)
    ref_ms, ext_ms = (statistics.median(times[k]) * 1e3 for k in ("torch", "ext"))
    ref_min, ext_min = (min(times[k]) * 1e3 for k in ("torch", "ext"))
    return {
        "ratio": ref_ms / ext_ms,
        "ref_ms": ref_ms,
        "ext_ms": ext_ms,
        "ratio_of_minima": ref_min / ext_min,
        "ref_min_ms": ref_min,
        "ext_min_ms": ext_min,
    }


THREADS = sorted({1, torch.get_num_threads()})


@pytest.fixture(params=THREADS, ids=lambda n: f"threads{n}")
def threads(request):
    """Intra-op threads for a CPU benchmark: 1 (the kernels alone) and all (as the library runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def right_padded_mask(B: int, N: int, g: torch.Generator, device: str = "cpu") -> torch.Tensor:
    """(B, N) bool: each row real for a random length between N/2 and N."""
    lengths = torch.randint(N // 2, N + 1, (B,), generator=g)
    return (torch.arange(N)[None, :] < lengths[:, None]).to(device)


def significance_like_attention(mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return (torch.rand(mask.shape, generator=g) + 0.01).to(mask.device).masked_fill(~mask, 0.0)


def record(benchmark, fn: Callable[[], object], **info: object) -> None:
    benchmark.extra_info.update(info)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()))
    benchmark.pedantic(fn, rounds=10, warmup_rounds=1, iterations=1)


# --- CPU -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_cpu_select_gather(benchmark, threads, dtype):
    g = torch.Generator().manual_seed(0)
    B, N, D, keep = 32, 512, 768, 256
    hidden = torch.randn(B, N, D, generator=g).to(dtype)
    mask = right_padded_mask(B, N, g)
    sig = significance_like_attention(mask, g)
    ref = lambda: ops.select_gather_ref(hidden, sig, mask, keep)  # noqa: E731
    cand = lambda: ext.select_gather_ext(hidden, sig, mask, keep)  # noqa: E731
    result = compare(ref, cand)
    with torch.inference_mode():
        mem_ref, mem_ext = peak_memory_mb(ref, torch.device("cpu")), peak_memory_mb(cand, torch.device("cpu"))
    benchmark.group = f"cpu select_gather B={B} N={N} D={D} keep={keep} {str(dtype)[6:]} threads={threads}"
    record(benchmark, cand, **result, ref_peak_mib=mem_ref, ext_peak_mib=mem_ext, threads=threads)
    assert result["ratio"] >= 2.0
    if mem_ref is not None and mem_ext is not None:
        assert mem_ext <= mem_ref


# What the ext attention does with the op: walk the attention probabilities of a batch block by block of
# d/2 = 32 query rows (the reference's memory bound for d = 64), each block a fresh contiguous tensor,
# summing the blocks' significance. The reference's attention does the same walk with its column sums.
# Rows are right-padded (real lengths between N/2 and N), as in a padded batch.
SIG_SHAPES = [(32, 12, 128), (8, 12, 512), (1, 12, 512)]


@pytest.mark.parametrize("exclude_self", [False, True], ids=["with_self", "exclude_self"])
@pytest.mark.parametrize("shape", SIG_SHAPES, ids=lambda s: "B{}xH{}xN{}".format(*s))
def test_cpu_significance_from_probs(benchmark, threads, shape, exclude_self):
    g = torch.Generator().manual_seed(0)
    B, H, N = shape
    rows = 32
    probs = torch.randn(B, H, N, N, generator=g).softmax(dim=-1)
    blocks = [(start, probs[:, :, start : start + rows].contiguous()) for start in range(0, N, rows)]
    mask = right_padded_mask(B, N, g)

    def ref():
        return sum(column_sums_ref(block, mask, start, exclude_self) for start, block in blocks)

    def cand():
        return sum(ext.significance_from_probs(block, mask, start, exclude_self) for start, block in blocks)

    torch.testing.assert_close(cand(), ref(), rtol=1e-4, atol=1e-4)
    result = compare(ref, cand, rounds=41)
    benchmark.group = (
        f"cpu significance_from_probs walk B={B} H={H} N={N} exclude_self={exclude_self} threads={threads}"
    )
    record(benchmark, cand, **result, threads=threads)
    assert result["ratio"] >= 1.0


@pytest.mark.parametrize("B,N", [(32, 128), (16, 128), (8, 512)])
def test_cpu_attention_ext_vs_reference(benchmark, threads, B, N):
    # q, k, v are views of one fused projection output, as a patched BERT layer hands them over.
    g = torch.Generator().manual_seed(0)
    H, d = 12, 64
    qkv = torch.randn(B, N, 3 * H * d, generator=g)
    q, k, v = (t.view(B, N, H, d) for t in qkv.split(H * d, dim=-1))
    mask = right_padded_mask(B, N, g)
    ref = lambda: ops.attention_with_significance_ref(q, k, v, mask)  # noqa: E731
    cand = lambda: ExtAttention.apply(q, k, v, mask, d**-0.5, False)  # noqa: E731
    sdpa_mask = mask[:, None, None, :]

    def sdpa():
        # The stock model's attention: SDPA on (B, H, N, d) views, output back to (B, N, H*d).
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=sdpa_mask
        )
        return out.transpose(1, 2).reshape(B, N, H * d)

    with torch.inference_mode():
        times = interleaved_times({"torch": ref, "ext": cand, "sdpa": sdpa}, rounds=15)
        mem_ref, mem_ext = peak_memory_mb(ref, torch.device("cpu")), peak_memory_mb(cand, torch.device("cpu"))
        mem_sdpa = peak_memory_mb(sdpa, torch.device("cpu"))
    ref_ms, ext_ms, sdpa_ms = (statistics.median(times[k]) * 1e3 for k in ("torch", "ext", "sdpa"))
    benchmark.group = f"cpu attention_with_significance B={B} N={N} H={H} d={d} fp32 threads={threads}"
    record(
        benchmark,
        cand,
        ratio=ref_ms / ext_ms,
        ref_ms=ref_ms,
        ext_ms=ext_ms,
        sdpa_ms=sdpa_ms,
        ext_over_sdpa=ext_ms / sdpa_ms,
        ref_peak_mib=mem_ref,
        ext_peak_mib=mem_ext,
        sdpa_peak_mib=mem_sdpa,
        threads=threads,
    )
    assert ref_ms / ext_ms >= 1.0
    assert mem_ext <= mem_ref


# --- GPU -------------------------------------------------------------------------------------------


def cuda_median_s(fn: Callable[[], object], rounds: int = 50, warmup: int = 5) -> float:
    """Median seconds per call, CUDA events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(
    "shape", [(32, 12, 512, 512), (128, 12, 128, 128), (4, 12, 1024, 1024)], ids=lambda s: "x".join(map(str, s))
)
def test_gpu_significance_reads_probs_at_copy_bandwidth(benchmark, shape, dtype):
    B, H, n_q, N = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    probs = torch.rand(B, H, n_q, N, device="cuda", dtype=dtype, generator=g) + 0.01
    mask = torch.ones(B, N, dtype=torch.bool, device="cuda")  # every row votes: the whole tensor is read
    copy_dst = torch.empty_like(probs)
    copy = lambda: copy_dst.copy_(probs)  # noqa: E731
    cand = lambda: ext.significance_from_probs(probs, mask, 0, True)  # noqa: E731
    # Interleaved: copy, candidate, copy, candidate, ... each timed with CUDA events.
    copy_s, cand_s = [], []
    for _ in range(3):
        copy_s.append(cuda_median_s(copy, rounds=20))
        cand_s.append(cuda_median_s(cand, rounds=20))
    nbytes = probs.numel() * probs.element_size()
    copy_gbps = 2 * nbytes / statistics.median(copy_s) / 1e9  # read + write
    sig_gbps = nbytes / statistics.median(cand_s) / 1e9  # one read
    benchmark.group = f"gpu significance_from_probs {shape} {str(dtype)[6:]}"
    record(
        benchmark,
        lambda: (cand(), torch.cuda.synchronize()),
        sig_gbps=sig_gbps,
        copy_gbps=copy_gbps,
        fraction=sig_gbps / copy_gbps,
        device=torch.cuda.get_device_name(),
    )
    assert sig_gbps >= 0.7 * copy_gbps


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_gpu_select_gather_vs_reference(benchmark, dtype):
    g = torch.Generator().manual_seed(0)
    B, N, D, keep = 32, 512, 768, 256
    hidden = torch.randn(B, N, D, generator=g).to(dtype).cuda()
    mask = right_padded_mask(B, N, g).cuda()
    sig = significance_like_attention(mask.cpu(), g).cuda()
    ref_s = cuda_median_s(lambda: ops.select_gather_ref(hidden, sig, mask, keep))
    ext_s = cuda_median_s(lambda: ext.select_gather_ext(hidden, sig, mask, keep))
    benchmark.group = f"gpu select_gather B={B} N={N} D={D} keep={keep} {str(dtype)[6:]}"
    record(
        benchmark,
        lambda: (ext.select_gather_ext(hidden, sig, mask, keep), torch.cuda.synchronize()),
        ratio=ref_s / ext_s,
        ref_ms=ref_s * 1e3,
        ext_ms=ext_s * 1e3,
        device=torch.cuda.get_device_name(),
    )
