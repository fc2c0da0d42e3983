"""Per-op CPU time breakdown of a PoWER-BERT forward (and the stock model's), with ``torch.profiler``.

Shows where a patched forward spends its time beyond the FLOP count: the GEMMs (``aten::addmm``) against
the memory-bound operations around them (copies, layer norms, GELU, adds, the attention). Run it with the
attention backend forced to compare implementations (``--backend torch`` is the pure-PyTorch reference
attention, ``--backend ext`` the fused C++ kernel), and with ``--background-load`` to see what a busy
machine does to small parallel regions.

    python benchmarks/profile_cpu.py --batch 16 --seq-len 128 \\
        --retention 76,62,55,52,42,40,36,24,17,13,11,3 --threads 2 --backend ext \\
        --output benchmarks/results/cpu/profile_b16_n128_ext.md

Writes a Markdown table (op, calls, self CPU ms over the profiled forwards, share) per model, preceded
by the command and the environment; ``--output`` is written atomically (a temporary file, then renamed).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from powerbert_kernels.benchmarking import (
    CONFIGS,
    _quiet_native_stderr,
    background_load,
    background_load_count,
    environment,
    load_models,
    random_inputs,
)
from powerbert_kernels.cli_args import positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="profile_cpu.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="bert-base")
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--seq-len", type=positive_int, default=128)
    parser.add_argument("--retention", help="comma-separated counts or fractions, one per layer (required)")
    parser.add_argument("--threads", type=positive_int, help="intra-op threads (default: PyTorch's)")
    parser.add_argument(
        "--background-load", type=background_load_count, default=0, metavar="K", help="K busy processes meanwhile"
    )
    parser.add_argument("--backend", choices=["ext", "torch"], help="force the attention/select backend")
    parser.add_argument("--forwards", type=positive_int, default=2, help="profiled forwards per model (default 2)")
    parser.add_argument("--top", type=positive_int, default=25, help="rows per table (default 25)")
    parser.add_argument("--no-stock", action="store_true", help="profile only the patched model")
    parser.add_argument("--output", type=Path, help="write the Markdown here instead of printing it")
    return parser


def op_table(model: torch.nn.Module, inputs: dict, forwards: int, top: int) -> tuple[str, float]:
    """Markdown table of the ``top`` ops by self CPU time over ``forwards`` profiled forwards, and the
    total self CPU time in milliseconds."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(**inputs)  # warm-up outside the profile
        with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(forwards):
                model(**inputs)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in events)
    lines = ["| op | calls | self CPU ms | share |", "|---|---|---|---|"]
    for e in events[:top]:
        share = e.self_cpu_time_total / total_us if total_us else 0.0
        lines.append(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e3:.2f} | {share:.1%} |")
    rest = sum(e.self_cpu_time_total for e in events[top:])
    if rest:
        lines.append(f"| (other {len(events) - top} ops) | | {rest / 1e3:.2f} | {rest / total_us:.1%} |")
    lines.append(f"| **total** | | **{total_us / 1e3:.2f}** | |")
    return "\n".join(lines), total_us / 1e3


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.retention:
        parser.error("--retention is required (one entry per layer)")
    if args.output is not None and not args.output.parent.is_dir():
        parser.error(f"--output: the folder {str(args.output.parent)!r} does not exist")
    if args.backend:
        os.environ["POWERBERT_BACKEND"] = args.backend
    if args.threads:
        torch.set_num_threads(args.threads)

    from powerbert_kernels.models import apply_power_bert, keep_counts, parse_retention

    args.model = None  # load_models reads --model or --config; this script builds random-weight models only
    stock, power = load_models(args, torch.device("cpu"), torch.float32)
    try:
        retention = parse_retention(args.retention)
        apply_power_bert(power, retention)
    except ValueError as exc:
        parser.error(f"--retention: {exc}")
    inputs = random_inputs(args.batch, args.seq_len, stock.config.vocab_size, torch.device("cpu"))

    sections = []
    with background_load(args.background_load):
        power_table, power_ms = op_table(power, inputs, args.forwards, args.top)
        sections.append(f"## PoWER-BERT ({args.forwards} forwards, {power_ms:.1f} ms self CPU)\n\n{power_table}")
        if not args.no_stock:
            stock_table, stock_ms = op_table(stock, inputs, args.forwards, args.top)
            sections.append(f"## Stock, SDPA ({args.forwards} forwards, {stock_ms:.1f} ms self CPU)\n\n{stock_table}")

    env = environment(torch.device("cpu"))
    command = "python benchmarks/profile_cpu.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    header = (
        f"# CPU profile: {args.config}, batch {args.batch}, seq-len {args.seq_len}\n\n"
        f"- **Command**: `{command}`\n"
        f"- **Kept per layer**: {keep_counts(retention, args.seq_len)}\n"
        f"- **Backend**: {args.backend or 'automatic'}; threads {torch.get_num_threads()}; "
        f"background load {args.background_load} busy processes\n"
        f"- **Environment**: {env['date']}, {env['device_name']}, torch {env['torch']}, "
        f"transformers {env['transformers']}\n"
        "- Self CPU time per op summed over the profiled forwards (profiler overhead included, so compare "
        "tables with each other rather than with `powerbert bench` times).\n"
    )
    text = header + "\n" + "\n\n".join(sections) + "\n"
    if args.output is None:
        print(text, end="")
        return 0
    with tempfile.NamedTemporaryFile("w", dir=args.output.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    os.replace(tmp.name, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
