"""Honest speed and memory comparisons of a stock model and its PoWER-BERT version (``powerbert bench``).

Both models run in the same process, interleaved (ABBA order, so drift and background load hit both
alike), after warm-up; the reported times are medians over repeats, and every speed-up is printed beside
the theoretical FLOP ratio, whose gap to the measured one is the overhead. Peak memory is measured in
separate runs: on CUDA with the allocator's peak statistics, on the CPU from the profiler's allocation
events, in both cases as the peak above what was allocated before the forward (the weights are common
to both and not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .cli_args import (
    check_max_positions,
    device_name,
    load_error,
    non_negative_int,
    positive_int,
    resolve_device,
    retention_list,
)

if TYPE_CHECKING:  # torch loads on first use, so that `powerbert bench --help` answers at once
    import torch
    from torch import nn

HELP = "time the stock Hugging Face model (SDPA attention) against its PoWER-BERT version"

CONFIGS: dict[str, tuple[str, dict[str, object]]] = {
    "bert-base": ("bert", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)),
    "bert-large": (
        "bert",
        dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    ),
    "minilm": ("bert", dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)),
    # albert-base-v2: 128-wide embeddings projected to 768, one layer shared by all 12 applications.
    "albert-base": (
        "albert",
        dict(
            embedding_size=128,
            hidden_size=768,
            num_hidden_layers=12,
            num_hidden_groups=1,
            num_attention_heads=12,
            intermediate_size=3072,
        ),
    ),
    "distilbert": ("distilbert", dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072)),
    # ModernBERT-base: 22 layers, global attention every third, the others local over 128 positions.
    "modernbert-base": (
        "modernbert",
        dict(
            hidden_size=768,
            num_hidden_layers=22,
            num_attention_heads=12,
            intermediate_size=1152,
            local_attention=128,
            global_attn_every_n_layers=3,
        ),
    ),
}
"""Random-weight sizes for ``powerbert bench --config``: the model type and its configuration."""
DTYPES = ("bfloat16", "float16", "float32")
"""The ``--dtype`` choices: names of torch dtypes."""

# The configuration PoWER-BERT learned for RTE on BERT-base (N = 256), as fractions of the length; the
# default retention of `powerbert bench` interpolates it to the model's depth.
PAPER_RTE_RETENTION = (153, 125, 111, 105, 85, 80, 72, 48, 35, 27, 22, 5)


def default_retention(num_layers: int) -> list[float]:
    """The paper's learned RTE configuration as fractions, resampled to ``num_layers`` layers."""
    fractions = [n / 256 for n in PAPER_RTE_RETENTION]
    out = []
    for j in range(num_layers):
        x = (j + 1) / num_layers * len(fractions) - 1
        lo = max(0, math.floor(x))
        hi = min(len(fractions) - 1, lo + 1)
        w = x - lo
        out.append(round((1 - w) * fractions[lo] + w * fractions[hi], 4))
    for j in range(1, num_layers):
        out[j] = min(out[j], out[j - 1])
    return out


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    device: torch.device,
    *,
    repeats: int = 10,
    warmup: int = 2,
) -> dict[str, list[float]]:
    """Milliseconds per call of each function, measured interleaved.

    Every function is warmed up ``warmup`` times, then each repeat runs all of them, in forward order
    on even repeats and reverse order on odd ones, so slow drifts and neighbours' load fall on all
    alike. On CUDA the device is synchronised around every call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


@contextlib.contextmanager
def _quiet_native_stderr():
    # The profiler's native library logs its start and stop to file descriptor 2; keep the reports clean.
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory allocated by one call of ``fn`` above what was allocated before it, in MiB.

    CUDA: the caching allocator's peak statistic. CPU: the running sum of the profiler's allocation
    events (None when this PyTorch build's profiler does not report them).
    """
    import torch

    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:
        return None
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        if event.device_type() == torch.device("cpu").type or str(event.device_type()).endswith("CPU"):
            current += event.nbytes()
            peak = max(peak, current)
    return peak / 2**20


# A busy child: integer work in slices of a few milliseconds, until the deadline or until its parent is
# gone (so that a benchmark killed without cleanup leaves nothing spinning). It reports once it runs.
_BUSY_CHILD = """
import os, sys, time
deadline = time.monotonic() + float(sys.argv[1])
parent = int(sys.argv[2])
sys.stdout.write("busy\\n")
sys.stdout.flush()
x = 0
while time.monotonic() < deadline and os.getppid() == parent:
    for i in range(20000):
        x = (x * 31 + i) & 0xFFFF
"""

MAX_BACKGROUND_LOAD = 64
"""Upper bound on ``--background-load`` (busy processes), whatever the number of cores."""


@contextlib.contextmanager
def background_load(processes: int, max_seconds: float = 3600.0):
    """Keep ``processes`` single-threaded busy child processes running for the duration of the block.

    Each child spins on integer work, so it competes for a core the way another CPU-bound job does
    without touching the memory bandwidth much. They are started (and confirmed running) before the
    block and ended when it exits, however it exits; each also stops by itself after ``max_seconds`` or
    when this process is gone.

    Args:
        processes: busy children, 0 (no load) to :data:`MAX_BACKGROUND_LOAD`.
        max_seconds: the longest any child runs.
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or not 0 <= processes <= MAX_BACKGROUND_LOAD:
        raise ValueError(f"processes must be an int between 0 and {MAX_BACKGROUND_LOAD}, got {processes!r}")
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    children: list[subprocess.Popen] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        for _ in range(processes):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-S", "-c", _BUSY_CHILD, str(float(max_seconds)), str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    env=env,
                )
            )
        for child in children:
            if child.stdout.readline().strip() != b"busy":
                raise RuntimeError(f"background load: a busy child process failed to start (exit {child.poll()})")
        yield children
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            child.stdout.close()


@dataclass
class Comparison:
    """Result of :func:`compare_models`; times in milliseconds (medians), memory in MiB."""

    baseline_ms: float
    power_ms: float
    speedup: float
    baseline_times_ms: list[float]
    power_times_ms: list[float]
    peak_mem_baseline_mb: float | None
    peak_mem_power_mb: float | None


def compare_models(
    baseline: nn.Module,
    power: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    *,
    repeats: int = 10,
    warmup: int = 2,
    measure_memory: bool = True,
) -> Comparison:
    """Time ``baseline(**inputs)`` against ``power(**inputs)`` interleaved, and their peak memory.

    Both models should be in eval mode on the device of ``inputs``. Runs under ``torch.inference_mode``.
    """
    import torch

    device = next(iter(inputs.values())).device

    def run(model):
        return lambda: model(**inputs)

    with torch.inference_mode():
        times = time_interleaved(
            {"baseline": run(baseline), "power": run(power)}, device, repeats=repeats, warmup=warmup
        )
        mem_base = peak_memory_mb(run(baseline), device) if measure_memory else None
        mem_power = peak_memory_mb(run(power), device) if measure_memory else None
    base_ms = statistics.median(times["baseline"])
    power_ms = statistics.median(times["power"])
    return Comparison(base_ms, power_ms, base_ms / power_ms, times["baseline"], times["power"], mem_base, mem_power)


RUNTIMES = ("torch", "compile", "onnxruntime")


@dataclass
class RuntimeComparison:
    """Result of :func:`compare_runtime`: the stock and patched models under one runtime, beside PyTorch.

    ``baseline_ms``/``power_ms`` (medians, milliseconds) are the two models under the runtime;
    ``eager_baseline_ms``/``eager_power_ms`` the same models run eagerly by PyTorch (SDPA attention),
    timed in the same interleaved repeats.
    """

    baseline_ms: float
    power_ms: float
    speedup: float
    eager_baseline_ms: float
    eager_power_ms: float
    speedup_vs_eager_sdpa: float
    runtime_baseline_vs_eager_sdpa: float
    times_ms: dict[str, list[float]]


def runtime_callables(
    runtime: str, baseline: nn.Module, power: nn.Module, inputs: Mapping[str, torch.Tensor], workdir: str, threads: int
) -> dict[str, Callable[[], object]]:
    """One call of each model under ``runtime``: ``torch.compile`` (default inductor backend), or an ONNX
    Runtime CPU session on the model exported by :func:`~powerbert_kernels.export_onnx` (both models the
    same way, same session options)."""
    import torch

    if runtime == "compile":
        compiled_baseline, compiled_power = torch.compile(baseline), torch.compile(power)
        return {"baseline": lambda: compiled_baseline(**inputs), "power": lambda: compiled_power(**inputs)}
    from .export import export_onnx, onnx_session

    calls = {}
    for name, model in (("baseline", baseline), ("power", power)):
        path = export_onnx(model, os.path.join(workdir, f"{name}.onnx"), allow_unpatched=True)
        session = onnx_session(path, threads=threads)
        # token_type_ids default to zeros in PyTorch; the exported graph takes them as an input.
        feed = {
            i.name: (inputs[i.name] if i.name in inputs else torch.zeros_like(inputs["input_ids"])).cpu().numpy()
            for i in session.get_inputs()
        }
        calls[name] = lambda session=session, feed=feed: session.run(None, feed)
    return calls


def compare_runtime(
    runtime: str,
    baseline: nn.Module,
    power: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    *,
    threads: int,
    repeats: int = 10,
    warmup: int = 2,
) -> RuntimeComparison:
    """Time the stock and patched models under ``runtime`` ("compile" or "onnxruntime") and eagerly.

    All four calls are interleaved (see :func:`time_interleaved`); compilation and export happen before
    the warm-up, under ``torch.inference_mode`` for the PyTorch calls.
    """
    import tempfile

    import torch

    if runtime not in RUNTIMES[1:]:
        raise ValueError(f"runtime must be one of {RUNTIMES[1:]}, got {runtime!r}")
    device = next(iter(inputs.values())).device
    with tempfile.TemporaryDirectory(prefix="powerbert-bench-") as workdir, torch.inference_mode():
        calls = runtime_callables(runtime, baseline, power, inputs, workdir, threads)
        calls["eager_baseline"] = lambda: baseline(**inputs)
        calls["eager_power"] = lambda: power(**inputs)
        times = time_interleaved(calls, device, repeats=repeats, warmup=max(1, warmup))
    ms = {name: statistics.median(t) for name, t in times.items()}
    return RuntimeComparison(
        baseline_ms=ms["baseline"],
        power_ms=ms["power"],
        speedup=ms["baseline"] / ms["power"],
        eager_baseline_ms=ms["eager_baseline"],
        eager_power_ms=ms["eager_power"],
        speedup_vs_eager_sdpa=ms["eager_baseline"] / ms["power"],
        runtime_baseline_vs_eager_sdpa=ms["eager_baseline"] / ms["baseline"],
        times_ms=times,
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, object]:
    """Versions, device and date, recorded beside every measurement."""
    import torch
    import transformers

    info: dict[str, object] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = _cpu_name()
        info["cpu_threads"] = torch.get_num_threads()
    return info


def random_inputs(batch: int, seq_len: int, vocab_size: int, device: torch.device, seed: int = 0) -> dict:
    """Random token ids (never all one token) with every position real, CLS id first."""
    import torch

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, vocab_size, (batch, seq_len), generator=g)
    input_ids[:, 0] = 101
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones(batch, seq_len, dtype=torch.long, device=device),
    }


def load_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """The stock model with SDPA attention and an independent copy to patch, both in eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if args.model:
        try:
            baseline = AutoModelForSequenceClassification.from_pretrained(
                args.model, attn_implementation="sdpa", num_labels=2, dtype=dtype
            )
        except OSError as e:
            raise load_error("--model", args.model, e) from e
    else:
        model_type, sizes = CONFIGS[args.config]
        config = AutoConfig.for_model(model_type, **sizes, num_labels=2)
        torch.manual_seed(0)
        baseline = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa").to(dtype)
    baseline = baseline.to(device).eval()
    return baseline, copy.deepcopy(baseline)


def background_load_count(text: str) -> int:
    """``argparse`` type of ``--background-load``: an int from 0 to :data:`MAX_BACKGROUND_LOAD`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int from 0 to {MAX_BACKGROUND_LOAD}, got {text!r}") from None
    if not 0 <= value <= MAX_BACKGROUND_LOAD:
        raise argparse.ArgumentTypeError(f"expected an int from 0 to {MAX_BACKGROUND_LOAD}, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="local HF model folder or hub id (weights loaded)")
    source.add_argument(
        "--config",
        choices=sorted(CONFIGS),
        default="bert-base",
        help="random-weight model of this size (default: bert-base)",
    )
    parser.add_argument("--batch", type=positive_int, default=16, help="sequences per forward")
    parser.add_argument(
        "--seq-len",
        type=positive_int,
        default=128,
        help="tokens per sequence, all real",
    )
    parser.add_argument(
        "--retention",
        type=retention_list,
        help="comma-separated counts or fractions, one per layer (default: the paper's RTE configuration as fractions)",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weights and activations")
    parser.add_argument(
        "--device", type=device_name, help="cpu, cuda or cuda:N (default: cuda when a GPU is present, else cpu)"
    )
    parser.add_argument(
        "--backend",
        choices=["triton", "ext", "torch"],
        help="force an ops backend (default: the dispatcher's choice for each call)",
    )
    parser.add_argument("--repeats", type=positive_int, default=10, help="interleaved timing repeats")
    parser.add_argument("--warmup", type=non_negative_int, default=2, help="untimed calls of each model first")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help="run both models eagerly in PyTorch (default), under torch.compile, or exported to ONNX and run by "
        "ONNX Runtime (CPU); the last two are also compared with the eager models",
    )
    parser.add_argument(
        "--threads", type=positive_int, help="CPU threads of PyTorch and ONNX Runtime (default: PyTorch's)"
    )
    parser.add_argument(
        "--background-load",
        type=background_load_count,
        default=0,
        metavar="K",
        help="run K busy single-threaded processes while measuring, to reproduce a loaded machine "
        "(ended by the benchmark; default 0)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    """``powerbert bench``: the settings it changes (threads, forced backend) are restored on return."""
    import torch

    threads, backend = torch.get_num_threads(), os.environ.get("POWERBERT_BACKEND")
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)
        if backend is None:
            os.environ.pop("POWERBERT_BACKEND", None)
        else:
            os.environ["POWERBERT_BACKEND"] = backend


def _run(args: argparse.Namespace) -> int:
    import torch

    from .models import apply_power_bert, flop_ratio, keep_counts

    if args.backend:
        os.environ["POWERBERT_BACKEND"] = args.backend
    if args.seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2 (the CLS token and one more), got {args.seq_len}")
    device = resolve_device(args.device)
    if args.runtime == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"--runtime onnxruntime runs on the CPU; pass --device cpu (got {device})")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    baseline, power = load_models(args, device, dtype)
    check_max_positions(args.seq_len, baseline.config.max_position_embeddings, "--seq-len")
    num_layers = baseline.config.num_hidden_layers
    retention = args.retention if args.retention else default_retention(num_layers)
    if args.runtime == "onnxruntime" and any(isinstance(r, float) for r in retention):
        # Fractions do not export; at one padded length they are these counts exactly.
        retention = keep_counts(retention, args.seq_len)
    apply_power_bert(power, retention)
    inputs = random_inputs(args.batch, args.seq_len, baseline.config.vocab_size, device)
    with background_load(args.background_load):
        if args.runtime != "torch":
            return _run_runtime(args, baseline, power, inputs, retention, device)
        result = compare_models(
            baseline, power, inputs, repeats=args.repeats, warmup=args.warmup, measure_memory=not args.no_memory
        )
    report = {
        "model": args.model or args.config,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "dtype": args.dtype,
        "retention": list(retention),
        "kept_per_layer": keep_counts(retention, args.seq_len),
        **asdict(result),
        "flop_ratio": flop_ratio(baseline, args.batch, args.seq_len, retention),
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "background_load": args.background_load,
        **environment(device),
    }
    if args.json:
        print(json.dumps(report))
        return 0
    mem = ""
    if result.peak_mem_baseline_mb is not None and result.peak_mem_power_mb is not None:
        base_mb, power_mb = result.peak_mem_baseline_mb, result.peak_mem_power_mb
        mem = (
            f"peak memory  HF SDPA {base_mb:9.1f} MiB   PoWER-BERT {power_mb:9.1f} MiB   ({power_mb / base_mb:.2f}x)\n"
        )
    print(
        f"{report['model']}  batch {args.batch}  seq-len {args.seq_len}  {args.dtype}  on {report['device_name']} "
        f"({report['device']}), torch {report['torch']}\n"
        f"threads {report['threads']}, background load {args.background_load} busy processes\n"
        f"kept per layer: {report['kept_per_layer']}\n"
        f"HF SDPA     median {result.baseline_ms:9.2f} ms\n"
        f"PoWER-BERT  median {result.power_ms:9.2f} ms\n"
        f"speed-up {result.speedup:.2f}x measured   {report['flop_ratio']:.2f}x FLOP ratio   "
        f"({result.speedup / report['flop_ratio']:.2f} of ideal; {args.repeats} interleaved repeats)\n" + mem
    )
    return 0


def _run_runtime(args, baseline, power, inputs, retention, device) -> int:
    import torch

    from .models import flop_ratio, keep_counts

    threads = args.threads or torch.get_num_threads()
    result = compare_runtime(
        args.runtime, baseline, power, inputs, threads=threads, repeats=args.repeats, warmup=args.warmup
    )
    report = {
        "model": args.model or args.config,
        "runtime": args.runtime,
        "threads": threads,
        "background_load": args.background_load,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "dtype": args.dtype,
        "retention": list(retention),
        "kept_per_layer": keep_counts(retention, args.seq_len),
        **asdict(result),
        "flop_ratio": flop_ratio(baseline, args.batch, args.seq_len, retention),
        "repeats": args.repeats,
        **environment(device),
    }
    if args.runtime == "onnxruntime":
        import onnxruntime

        report["onnxruntime"] = onnxruntime.__version__
    if args.json:
        print(json.dumps(report))
        return 0
    label = {"compile": "torch.compile", "onnxruntime": "ONNX Runtime"}[args.runtime]
    print(
        f"{report['model']}  batch {args.batch}  seq-len {args.seq_len}  {args.dtype}  on {report['device_name']} "
        f"({report['device']}), torch {report['torch']}, {threads} threads\n"
        f"kept per layer: {report['kept_per_layer']}\n"
        f"{label + ' stock':30s} median {result.baseline_ms:9.2f} ms\n"
        f"{label + ' PoWER-BERT':30s} median {result.power_ms:9.2f} ms\n"
        f"{'PyTorch eager stock (SDPA)':30s} median {result.eager_baseline_ms:9.2f} ms\n"
        f"{'PyTorch eager PoWER-BERT':30s} median {result.eager_power_ms:9.2f} ms\n"
        f"speed-up under {label}: {result.speedup:.2f}x measured   {report['flop_ratio']:.2f}x FLOP ratio   "
        f"({result.speedup / report['flop_ratio']:.2f} of ideal; {args.repeats} interleaved repeats)\n"
        f"PoWER-BERT under {label} vs stock PyTorch SDPA: {result.speedup_vs_eager_sdpa:.2f}x   "
        f"(stock under {label} vs stock PyTorch SDPA: {result.runtime_baseline_vs_eager_sdpa:.2f}x)"
    )
    return 0
