"""The whole GPU benchmark sweep in one call: kernels, the performance targets, end to end.

Usage (on a machine with a CUDA GPU)::

    python benchmarks/gpu_sweep.py [--out benchmarks/results] [--stem gpu_sweep] [--quick] [--tune]
                                   [--skip-e2e] [--sections NAME,NAME,...] [--list]

Writes ``<stem>.json`` (every number, the environment, any section that failed with its error) and
``<stem>.md`` (the same as Markdown tables) to the output folder, rewriting both after each section
so that a run cut short still leaves its results. ``--sections`` runs the named sections only, in the
order given (``--list`` prints them); ``benchmarks/run_gpu.sh`` runs the targets first that way. Sections:

1. correctness on the GPU: Triton vs the reference at the sweep's shapes (max errors), before timing;
2. attention and select-gather sweeps: torch / triton / ext over B in {1, 32, 128}, N in {64 .. 1024};
3. the two attention variants (single pass vs two passes) at short lengths: sets ``SINGLE_PASS_MAX_N``;
4. targets: attention vs ``scaled_dot_product_attention`` on the same inputs (B=64, H=12, d=64, fp16,
   N=128 and 512; goal <= 1.5x); select-gather vs a device-to-device copy of the same bytes (B=128,
   N=512, D=768, fp16; goal >= 70% of its bandwidth); bert-base (random weights, fp16) end to end vs HF
   SDPA at B=128, N=128 with the paper-style retention 76,62,...,3 (goal: speed-up >= 0.9 x FLOP
   ratio) and at B=32, N=512 (goal: peak memory <= HF SDPA + 10%);
5. small batches, where launch overhead hides any saving: bert-base fp16, N=128, B=8 then B=1, both
   models under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs), beside the eager speed-up
   (goal at B=8: speed-up >= 0.8 x FLOP ratio);
6. the CUDA extension's targets (when it is built with CUDA kernels): its select-gather against the
   copy bandwidth (goal >= 50%) and its attention against SDPA;
7. optional (``--tune``): a small grid of tile configurations at the target shapes (check a new
   choice for spills with ``python -m powerbert_kernels.triton.codegen`` before adopting it).

Kernel times are medians of ``triton.testing.do_bench`` (CUDA events, warm-up); model times come from
:mod:`powerbert_kernels.benchmarking` (interleaved ABBA repeats, medians).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _measure  # noqa: E402
from _measure import (  # noqa: E402
    ATTENTION_OP,
    PROVIDERS,
    SELECT_GATHER_OP,
    attention_fn,
    attention_inputs,
    copy_gbps,
    measure_attention,
    measure_select_gather,
    median_ms,
    provider_available,
    select_gather_inputs,
)

from powerbert_kernels import apply_power_bert, flop_ratio, ops  # noqa: E402
from powerbert_kernels import benchmarking as bm  # noqa: E402
from powerbert_kernels.ops import attention_flops  # noqa: E402
from powerbert_kernels.triton import attention_significance as attn_mod  # noqa: E402
from powerbert_kernels.triton.attention_significance import (  # noqa: E402
    AttentionConfig,
    attention_with_significance_triton,
    default_config,
)

E2E_RETENTION = [76, 62, 55, 52, 42, 40, 36, 24, 17, 13, 11, 3]
SWEEP_B = (1, 32, 128)
SWEEP_N = (64, 128, 256, 512, 1024)


class Report:
    """Collects sections and rewrites the JSON and Markdown files after each one."""

    def __init__(self, out: Path, environment: dict, stem: str = "gpu_sweep") -> None:
        self.out = out
        self.stem = stem
        self.data: dict[str, object] = {"environment": environment, "sections": {}}
        self.md: list[str] = []

    def section(self, name: str, title: str, fn, *args) -> None:
        print(f"== {title}", flush=True)
        start = time.perf_counter()
        try:
            result, lines = fn(*args)
            self.data["sections"][name] = result
            self.md += [f"## {title}", "", *lines, ""]
        except Exception as exc:  # keep the other sections' results; say what failed
            error = f"{type(exc).__name__}: {exc}"
            self.data["sections"][name] = {"error": error, "traceback": traceback.format_exc()}
            self.md += [f"## {title}", "", f"**failed**: `{error}`", ""]
            traceback.print_exc()
        print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
        self.write()

    def verdict(self) -> str:
        """One line: sections that ran and failed, goals met and missed."""
        goals = []

        def collect(value) -> None:
            if isinstance(value, dict):
                if isinstance(value.get("met"), bool):
                    goals.append(value["met"])
                for item in value.values():
                    if isinstance(item, dict | list):
                        collect(item)
            elif isinstance(value, list):
                for item in value:
                    collect(item)

        sections = self.data["sections"]
        failed = [name for name, result in sections.items() if isinstance(result, dict) and "error" in result]
        collect(sections)
        which = f" ({', '.join(failed)})" if failed else ""
        return (
            f"sections: {len(sections) - len(failed)} ok, {len(failed)} failed{which}; "
            f"goals: {sum(goals)} met, {len(goals) - sum(goals)} not met"
        )

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{self.stem}.json").write_text(json.dumps(self.data, indent=1, default=str))
        env = self.data["environment"]
        head = [
            f"# GPU sweep: {self.stem}",
            "",
            f"{env.get('device_name')} | torch {env.get('torch')} | triton {env.get('triton')} | "
            f"transformers {env.get('transformers')} | CUDA {env.get('cuda')} | {env.get('date')}",
            "",
        ]
        (self.out / f"{self.stem}.md").write_text("\n".join(head + self.md) + "\n")


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> list[str]:
    """Markdown table; columns are (key, header, format)."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("" if value is None else format(value, fmt) if fmt else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _attempt(measure, *args, **row) -> dict:
    # One failing provider or shape (a backend that cannot run it, an out-of-memory) is recorded and
    # the sweep goes on.
    try:
        return measure(*args)
    except Exception as exc:
        torch.cuda.empty_cache()
        return {**row, "error": f"{type(exc).__name__}: {exc}"[:300]}


def correctness(shapes) -> tuple[list[dict], list[str]]:
    rows = []
    for B, N in shapes:
        q, k, v, mask = attention_inputs(B, N, real_fraction=0.8)
        mask[0] = True
        out, sig = ops.attention_with_significance(q, k, v, mask, backend="triton", exclude_self=True)
        ref_out, ref_sig = ops.attention_with_significance_ref(q, k, v, mask, exclude_self=True)
        hidden, significance, hmask = select_gather_inputs(B, N)
        keep = max(1, N // 3)
        got = ops.select_gather(hidden, significance, hmask, keep, backend="triton")
        want = ops.select_gather_ref(hidden, significance, hmask, keep)
        rows.append(
            {
                "B": B,
                "N": N,
                "variant": default_config(B, N, 12, 64, torch.float16, q.device).variant,
                "out_max_err": (out.float() - ref_out.float()).abs().max().item(),
                "sig_max_err": (sig - ref_sig).abs().max().item(),
                "sig_max": ref_sig.abs().max().item(),
                "select_gather_exact": all(torch.equal(a, b) for a, b in zip(got, want, strict=True)),
            }
        )
    return rows, table(
        rows,
        [
            ("B", "B", ""),
            ("N", "N", ""),
            ("variant", "attention kernel", ""),
            ("out_max_err", "out max err (fp16)", ".2e"),
            ("sig_max_err", "significance max err", ".2e"),
            ("sig_max", "max significance", ".1f"),
            ("select_gather_exact", "select-gather exact", ""),
        ],
    )


def attention_sweep(batches, lengths) -> tuple[list[dict], list[str]]:
    rows = []
    for provider in PROVIDERS:
        if provider_available(ATTENTION_OP, provider):
            continue
        for B in batches:
            for N in lengths:
                rows.append(_attempt(measure_attention, provider, B, N, provider=provider, B=B, N=N))
                print(f"   {provider:9s} B={B:4d} N={N:5d} {rows[-1].get('ms', float('nan')):8.3f} ms", flush=True)
    return rows, table(
        rows,
        [
            ("provider", "provider", ""),
            ("B", "B", ""),
            ("N", "N", ""),
            ("ms", "ms", ".3f"),
            ("tflops", "TFLOP/s", ".1f"),
            ("peak_mib", "peak MiB", ".1f"),
            ("error", "error", ""),
        ],
    )


def select_gather_sweep(batches, lengths) -> tuple[list[dict], list[str]]:
    rows = []
    for B in batches:
        for N in lengths:
            copy = copy_gbps(B, N // 2, 768)
            rows.append({"provider": "copy", "B": B, "N": N, "keep": N // 2, "D": 768, **copy})
            for provider in PROVIDERS:
                if not provider_available(SELECT_GATHER_OP, provider):
                    rows.append(
                        _attempt(
                            measure_select_gather, provider, B, N, N // 2, provider=provider, B=B, N=N, keep=N // 2
                        )
                    )
                    if "gbps" in rows[-1]:
                        rows[-1]["of_copy"] = rows[-1]["gbps"] / copy["gbps"]
    return rows, table(
        rows,
        [
            ("provider", "provider", ""),
            ("B", "B", ""),
            ("N", "N", ""),
            ("keep", "keep", ""),
            ("ms", "ms", ".4f"),
            ("gbps", "GB/s", ".0f"),
            ("of_copy", "of copy", ".0%"),
            ("peak_mib", "peak MiB", ".1f"),
            ("error", "error", ""),
        ],
    )


def _launcher(q, k, v, mask, config):
    d = q.shape[-1]
    return lambda: attention_with_significance_triton(q, k, v, mask, d**-0.5, False, config=config)


def variants(batches, lengths) -> tuple[dict, list[str]]:
    rows = []
    for B in batches:
        for N in lengths:
            q, k, v, mask = attention_inputs(B, N)
            single = default_config(B, N, 12, 64, torch.float16, q.device, variant="single_pass")
            double = default_config(B, N, 12, 64, torch.float16, q.device, variant="two_pass")
            row = {"B": B, "N": N, "two_pass_ms": median_ms(_launcher(q, k, v, mask, double))}
            try:
                row["single_pass_ms"] = median_ms(_launcher(q, k, v, mask, single))
                row["single_over_two"] = row["single_pass_ms"] / row["two_pass_ms"]
            except Exception as exc:  # e.g. out of shared memory at the longest lengths
                row["single_pass_error"] = f"{type(exc).__name__}: {exc}"[:200]
            rows.append(row)
    faster = sorted({r["N"] for r in rows if r.get("single_over_two", 9.0) < 1.0})
    # The longest length up to which the single pass wins at every batch size and every shorter length.
    longest = 0
    for n in sorted({r["N"] for r in rows}):
        if not all(r.get("single_over_two", 9.0) < 1.0 for r in rows if r["N"] == n):
            break
        longest = n
    threshold = max(16, 1 << (longest - 1).bit_length()) if longest else 0
    advice = (
        f"single pass faster at every batch size for every N <= {longest}: set SINGLE_PASS_MAX_N = "
        f"{threshold} (now {attn_mod.SINGLE_PASS_MAX_N})"
    )
    result = {"rows": rows, "single_faster_at": faster, "advice": advice}
    return result, [
        advice,
        "",
        *table(
            rows,
            [
                ("B", "B", ""),
                ("N", "N", ""),
                ("two_pass_ms", "two-pass ms", ".3f"),
                ("single_pass_ms", "single-pass ms", ".3f"),
                ("single_over_two", "single / two", ".2f"),
                ("single_pass_error", "single-pass error", ""),
            ],
        ),
    ]


def _sdpa(q, k, v, mask):
    # The same (B, N, H, d) projection views, as (B, H, N, d) for SDPA; the key padding mask broadcast.
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    attn_mask = None if mask is None else mask[:, None, None, :]
    return lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=attn_mask)


def attention_target(lengths, batch: int = 64) -> tuple[list[dict], list[str]]:
    rows = []
    for N in lengths:
        q, k, v, mask = attention_inputs(batch, N)
        ours = median_ms(attention_fn("triton", q, k, v, mask))
        sdpa_masked = median_ms(_sdpa(q, k, v, mask))
        sdpa_plain = median_ms(_sdpa(q, k, v, None))
        rows.append(
            {
                "B": batch,
                "N": N,
                "triton_ms": ours,
                "sdpa_masked_ms": sdpa_masked,
                "sdpa_unmasked_ms": sdpa_plain,
                "ratio_vs_masked": ours / sdpa_masked,
                "ratio_vs_unmasked": ours / sdpa_plain,
                "tflops": attention_flops(batch, N, 12, 64) / (ours * 1e-3) / 1e12,
                "variant": default_config(batch, N, 12, 64, torch.float16, q.device).variant,
                "goal": "<= 1.5",
                "met": ours / sdpa_masked <= 1.5,
            }
        )
    return rows, table(
        rows,
        [
            ("N", "N", ""),
            ("variant", "kernel", ""),
            ("triton_ms", "ours ms", ".3f"),
            ("sdpa_masked_ms", "SDPA (same mask) ms", ".3f"),
            ("sdpa_unmasked_ms", "SDPA (no mask) ms", ".3f"),
            ("ratio_vs_masked", "ours / SDPA", ".2f"),
            ("ratio_vs_unmasked", "ours / unmasked", ".2f"),
            ("tflops", "TFLOP/s", ".0f"),
            ("met", "<= 1.5x", ""),
        ],
    )


def gather_target(keeps, batch: int = 128, seq_len: int = 512, hidden_size: int = 768) -> tuple[list[dict], list[str]]:
    rows = []
    for keep in keeps:
        copy = copy_gbps(batch, keep, hidden_size)
        ours = measure_select_gather("triton", batch, seq_len, keep, hidden_size)
        rows.append(
            {
                "keep": keep,
                "triton_ms": ours["ms"],
                "triton_gbps": ours["gbps"],
                "copy_ms": copy["ms"],
                "copy_gbps": copy["gbps"],
                "fraction": ours["gbps"] / copy["gbps"],
                "goal": ">= 0.70",
                "met": ours["gbps"] / copy["gbps"] >= 0.70,
            }
        )
    return rows, table(
        rows,
        [
            ("keep", "keep", ""),
            ("triton_ms", "ours ms", ".4f"),
            ("triton_gbps", "ours GB/s", ".0f"),
            ("copy_gbps", "copy GB/s", ".0f"),
            ("fraction", "of copy", ".0%"),
            ("met", ">= 70%", ""),
        ],
    )


E2E_CASES = (("speed", 128, 128), ("memory", 32, 512))


def end_to_end(
    quick: bool, cases=E2E_CASES, config: str = "bert-base", dtype: torch.dtype = torch.float16
) -> tuple[dict, list[str]]:
    device = _measure.DEVICE
    args = argparse.Namespace(model=None, config=config)
    baseline, power = bm.load_models(args, device, dtype)
    repeats = 6 if quick else 20
    results = {}
    lines = []
    for name, B, N in cases:
        retention = E2E_RETENTION
        apply_power_bert(power, retention)
        inputs = bm.random_inputs(B, N, baseline.config.vocab_size, device)
        row = {"B": B, "N": N, "retention": retention, "flop_ratio": flop_ratio(baseline, B, N, retention)}
        backends = {}
        for backend in ("triton", "torch"):
            os.environ["POWERBERT_BACKEND"] = backend
            try:
                cmp = bm.compare_models(baseline, power, inputs, repeats=repeats, warmup=3)
            finally:
                os.environ.pop("POWERBERT_BACKEND", None)
            backends[backend] = {
                "hf_sdpa_ms": cmp.baseline_ms,
                "power_ms": cmp.power_ms,
                "speedup": cmp.speedup,
                "of_flop_ratio": cmp.speedup / row["flop_ratio"],
                "peak_hf_mib": cmp.peak_mem_baseline_mb,
                "peak_power_mib": cmp.peak_mem_power_mb,
                "memory_ratio": cmp.peak_mem_power_mb / cmp.peak_mem_baseline_mb,
            }
            if quick:
                break
        row["backends"] = backends
        ours = backends["triton"]
        if name == "speed":
            row["goal"] = "speed-up >= 0.9 x FLOP ratio"
            row["met"] = ours["of_flop_ratio"] >= 0.9
        else:
            row["goal"] = "peak memory <= HF SDPA + 10%"
            row["met"] = ours["memory_ratio"] <= 1.10
        results[name] = row
        verdict = "met" if row["met"] else "NOT met"
        lines += [
            f"**{name}**: {config} random weights {str(dtype)[6:]}, B={B}, N={N}, retention {retention}; "
            f"FLOP ratio {row['flop_ratio']:.2f}x; goal: {row['goal']} -> **{verdict}**",
            "",
        ]
        lines += table(
            [{"backend": b, **r} for b, r in backends.items()],
            [
                ("backend", "ops backend", ""),
                ("hf_sdpa_ms", "HF SDPA ms", ".2f"),
                ("power_ms", "PoWER-BERT ms", ".2f"),
                ("speedup", "speed-up", ".2f"),
                ("of_flop_ratio", "of FLOP ratio", ".2f"),
                ("peak_hf_mib", "HF peak MiB", ".0f"),
                ("peak_power_mib", "PoWER peak MiB", ".0f"),
                ("memory_ratio", "memory ratio", ".2f"),
            ],
        )
        lines.append("")
    return results, lines


SMALL_BATCHES = (8, 1)
"""The target batch (B=8) first: compiling the two models for each batch size takes most of the time."""


def small_batch(
    batches=SMALL_BATCHES,
    seq_len: int = 128,
    config: str = "bert-base",
    dtype: torch.dtype = torch.float16,
    retention=E2E_RETENTION,
    repeats: int = 20,
) -> tuple[list[dict], list[str]]:
    device = _measure.DEVICE
    baseline, power = bm.load_models(argparse.Namespace(model=None, config=config), device, dtype)
    apply_power_bert(power, retention)
    # Fixed shapes: one CUDA graph per model and batch size, as a server with padded batches would use.
    compiled = {
        "hf_sdpa": torch.compile(baseline, mode="reduce-overhead", dynamic=False),
        "power": torch.compile(power, mode="reduce-overhead", dynamic=False),
    }
    rows = []
    for B in batches:
        inputs = bm.random_inputs(B, seq_len, baseline.config.vocab_size, device)
        row: dict[str, object] = {"B": B, "N": seq_len, "flop_ratio": flop_ratio(baseline, B, seq_len, retention)}
        eager = bm.compare_models(baseline, power, inputs, repeats=repeats, warmup=3, measure_memory=False)
        row["eager_speedup"] = eager.speedup
        for name, model in compiled.items():

            def call(model=model, inputs=inputs):
                torch.compiler.cudagraph_mark_step_begin()
                return model(**inputs)

            try:
                with torch.inference_mode():
                    start = time.perf_counter()
                    for _ in range(3):  # compile, record the graph, replay
                        call()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    row[f"{name}_compile_s"] = time.perf_counter() - start
                    row[f"{name}_ms"] = median_ms(call)
            except Exception as exc:  # a graph break or a capture failure: recorded, the other model still runs
                row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
        if "hf_sdpa_ms" in row and "power_ms" in row:
            row["speedup"] = row["hf_sdpa_ms"] / row["power_ms"]
            row["of_flop_ratio"] = row["speedup"] / row["flop_ratio"]
            if B == 8:
                row["goal"] = "speed-up >= 0.8 x FLOP ratio"
                row["met"] = row["of_flop_ratio"] >= 0.8
        rows.append(row)
    return rows, [
        f"{config} random weights {str(dtype)[6:]}, retention {list(retention)}, torch.compile(mode='reduce-overhead')",
        "",
        *table(
            rows,
            [
                ("B", "B", ""),
                ("flop_ratio", "FLOP ratio", ".2f"),
                ("eager_speedup", "eager speed-up", ".2f"),
                ("hf_sdpa_ms", "HF SDPA graph ms", ".3f"),
                ("power_ms", "PoWER graph ms", ".3f"),
                ("speedup", "graph speed-up", ".2f"),
                ("of_flop_ratio", "of FLOP ratio", ".2f"),
                ("met", ">= 0.8 at B=8", ""),
                ("hf_sdpa_compile_s", "HF compile s", ".0f"),
                ("power_compile_s", "PoWER compile s", ".0f"),
                ("hf_sdpa_error", "HF error", ""),
                ("power_error", "PoWER error", ""),
            ],
        ),
    ]


def ext_targets(
    batch: int = 128,
    seq_len: int = 512,
    hidden_size: int = 768,
    keeps=(128, 256, 384),
    attention_batch: int = 64,
    attention_lengths=(128, 512),
) -> tuple[list[dict], list[str]]:
    for op in (SELECT_GATHER_OP, ATTENTION_OP):
        reason = provider_available(op, "ext")
        if reason:
            raise RuntimeError(f"{reason} (build the extension with CUDA kernels first)")
    rows = []
    for keep in keeps:
        copy = copy_gbps(batch, keep, hidden_size)
        ours = measure_select_gather("ext", batch, seq_len, keep, hidden_size)
        fraction = ours["gbps"] / copy["gbps"]
        rows.append(
            {
                "what": f"select-gather B={batch} N={seq_len} D={hidden_size} keep={keep}",
                "ext_ms": ours["ms"],
                "value": f"{ours['gbps']:.0f} GB/s = {fraction:.0%} of copy ({copy['gbps']:.0f} GB/s)",
                "goal": ">= 50% of copy",
                "met": fraction >= 0.5,
            }
        )
    for N in attention_lengths:
        q, k, v, mask = attention_inputs(attention_batch, N)
        ours = median_ms(attention_fn("ext", q, k, v, mask))
        sdpa = median_ms(_sdpa(q, k, v, mask))
        rows.append(
            {
                "what": f"attention B={attention_batch} H=12 d=64 N={N}",
                "ext_ms": ours,
                "value": f"{ours / sdpa:.2f}x SDPA ({sdpa:.3f} ms)",
                "goal": "(the Triton kernel's goal: <= 1.5x)",
                "met": None,
            }
        )
    return rows, table(
        rows,
        [
            ("what", "ext (fp16)", ""),
            ("ext_ms", "ms", ".4f"),
            ("value", "result", ""),
            ("goal", "goal", ""),
            ("met", "met", ""),
        ],
    )


def tune(lengths, batch: int = 64) -> tuple[dict, list[str]]:
    rows = []
    for N in lengths:
        q, k, v, mask = attention_inputs(batch, N)
        n_pad = max(16, 1 << (N - 1).bit_length())
        configs = []
        if n_pad <= 256:
            configs += [
                AttentionConfig("single_pass", bm_, n_pad, w, 1) for bm_ in (16, 32, 64) for w in (4, 8) if bm_ <= n_pad
            ]
        configs += [
            AttentionConfig("two_pass", bm_, bn, w, st, sbm, sbn, sw)
            for bm_, bn, w in ((64, 64, 4), (128, 64, 8), (128, 32, 4), (64, 32, 8))
            for st in (2, 3)
            for sbm, sbn, sw in ((32, 128, 8), (64, 64, 8), (64, 128, 8))
            if bm_ <= n_pad and bn <= n_pad and sbn <= n_pad
        ]
        for config in configs:
            try:
                ms = median_ms(_launcher(q, k, v, mask, config), warmup=10, rep=40)
                rows.append({"N": N, **config.__dict__, "ms": ms})
            except Exception as exc:
                rows.append({"N": N, **config.__dict__, "error": f"{type(exc).__name__}"})
    best = {}
    for N in lengths:
        timed = [r for r in rows if r["N"] == N and "ms" in r]
        if timed:
            best[N] = min(timed, key=lambda r: r["ms"])
    default = {N: default_config(batch, N, 12, 64, torch.float16, _measure.DEVICE).__dict__ for N in lengths}
    lines = [f"B={batch}, H=12, d=64, fp16. Best per N:", ""]
    lines += table(
        list(best.values()),
        [
            ("N", "N", ""),
            ("variant", "variant", ""),
            ("block_m", "BM", ""),
            ("block_n", "BN", ""),
            ("num_warps", "warps", ""),
            ("num_stages", "stages", ""),
            ("sig_block_n", "pass-2 BN", ""),
            ("sig_num_warps", "pass-2 warps", ""),
            ("ms", "ms", ".3f"),
        ],
    )
    return {"rows": rows, "best": best, "default": default}, lines


def plan(quick: bool, skip_e2e: bool, with_tune: bool) -> list[tuple[str, str, object, tuple]]:
    """The sections in their default order: (name, title, function, arguments)."""
    batches = (1, 128) if quick else SWEEP_B
    lengths = (64, 128, 512) if quick else SWEEP_N
    sections = [
        (
            "correctness",
            "Correctness on the GPU (Triton vs reference, fp16, exclude_self)",
            correctness,
            ([(2, 1), (3, 77), (8, 128), (4, 256), (4, 257), (2, 1024), (1, 4096)],),
        ),
        ("attention", "Attention with significance (H=12, d=64, fp16)", attention_sweep, (batches, lengths)),
        ("select_gather", "Select-gather (D=768, keep=N/2, fp16)", select_gather_sweep, (batches, lengths)),
        (
            "variants",
            "Attention: single pass vs two passes",
            variants,
            ((128,) if quick else (32, 128), (64, 128, 256)),
        ),
        ("target_attention", "Target: attention vs SDPA (B=64, H=12, d=64, fp16)", attention_target, ((128, 512),)),
        (
            "target_select_gather",
            "Target: select-gather vs copy bandwidth (B=128, N=512, D=768, fp16)",
            gather_target,
            ((128, 256, 384),),
        ),
    ]
    if not skip_e2e:
        sections += [
            ("end_to_end", "Targets: bert-base end to end vs HF SDPA", end_to_end, (quick,)),
            ("small_batch", "Target: small batches under CUDA graphs (bert-base, N=128)", small_batch, ()),
        ]
    sections.append(("ext_targets", "The CUDA extension: select-gather bandwidth, attention vs SDPA", ext_targets, ()))
    if with_tune:
        sections.append(("tune", "Tile configurations at the target shapes", tune, ((128, 512),)))
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="folder for <stem>.json and <stem>.md (default: benchmarks/results)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats (a few minutes)")
    parser.add_argument("--tune", action="store_true", help="also time a grid of tile configurations")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end model comparisons")
    parser.add_argument("--stem", default="gpu_sweep", help="name of the output files (default: gpu_sweep)")
    parser.add_argument("--sections", help="comma-separated sections to run, in this order (default: all)")
    parser.add_argument("--list", action="store_true", help="print the sections and exit")
    args = parser.parse_args(argv)
    sections = plan(args.quick, args.skip_e2e, args.tune)
    if args.list:
        for name, title, _fn, _args in sections:
            print(f"{name:22s} {title}")
        return 0
    if args.sections:
        by_name = {section[0]: section for section in sections}
        wanted = [name.strip() for name in args.sections.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in by_name]
        if unknown or not wanted:
            parser.error(
                f"--sections: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(by_name)}"
            )
        sections = [by_name[name] for name in wanted]
    if not torch.cuda.is_available():
        print("gpu_sweep: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    environment = bm.environment(torch.device("cuda"))
    environment["registered_backends"] = {op: ops.registered_backends(op) for op in (ATTENTION_OP, SELECT_GATHER_OP)}
    environment["single_pass_max_n"] = attn_mod.SINGLE_PASS_MAX_N
    report = Report(args.out, environment, args.stem)
    for name, title, fn, fn_args in sections:
        report.section(name, title, fn, *fn_args)
    print(f"wrote {args.out / (args.stem + '.json')} and {args.out / (args.stem + '.md')}")
    print(report.verdict())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
