"""Compile the Triton kernels for NVIDIA GPUs without one, and report their resource usage.

Triton's wheels ship ``ptxas`` and ``cuobjdump``, so the kernels can be compiled to machine code for any
supported architecture on a machine without a GPU: this catches what the CPU interpreter cannot
(code-generation errors, register spills, shared-memory overflows) for the launches the launchers make
(:func:`~powerbert_kernels.triton.attention_significance.attention_launches`,
:func:`~powerbert_kernels.triton.select_gather.select_gather_launches`): tile sizes, dot precision and
scan block are read from there, never recomputed. Must run in a process where ``TRITON_INTERPRET`` was
not set when the kernels were imported::

    python -m powerbert_kernels.triton.codegen --arch 80 90
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import torch
import triton

from . import attention_significance as attn
from . import select_gather as sg
from ._common import KernelLaunch

_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass
class KernelBuild:
    """One compiled kernel: what it is and the resources ptxas gave it."""

    kernel: str
    arch: int
    dtype: str
    shape: str
    constexprs: dict
    num_warps: int
    num_stages: int
    registers: int | None = None
    spill_bytes: int | None = None
    shared_bytes: int | None = None
    error: str | None = None


def _signature(fn, pointers: dict[str, str], floats: tuple[str, ...], constexprs: dict) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = "*" + pointers[name]
        else:
            sig[name] = "fp32" if name in floats else "i32"
    return sig


def _job(launch: KernelLaunch, pointers: dict[str, str]) -> tuple:
    fn = launch.kernel
    signature = _signature(fn, pointers, ("qk_scale",), launch.constexprs)
    return launch.name, fn, signature, launch.constexprs, launch.num_warps, launch.num_stages


def attention_jobs(
    dtype: torch.dtype, head_dim: int, seq_len: int, batch: int = 64, heads: int = 12, variant: str | None = None
) -> list[tuple]:
    """(name, kernel, signature, constexprs, warps, stages) of every launch of one attention call, as
    :func:`~powerbert_kernels.triton.attention_significance.attention_launches` makes them."""
    config = attn.default_config(batch, seq_len, heads, head_dim, dtype, torch.device("cpu"), variant)
    t = _TRITON_TYPES[dtype]
    io = {"Q": t, "K": t, "V": t, "MASK": "u8", "OUT": t, "LSE": "fp32", "SIG": "fp32", "PARTIAL": "fp32"}
    launches = attn.attention_launches(batch, seq_len, heads, head_dim, dtype, True, config)
    return [_job(launch, io) for launch in launches]


def select_gather_jobs(dtype: torch.dtype, seq_len: int, hidden_size: int) -> list[tuple]:
    """(name, kernel, signature, constexprs, warps, stages) of the select and gather launches, as
    :func:`~powerbert_kernels.triton.select_gather.select_gather_launches` makes them."""
    t = _TRITON_TYPES[dtype]
    io = {"SIG": "fp32", "MASK": "u8", "INDICES": "i64", "MASK_OUT": "u8", "HIDDEN": t, "OUT": t}
    return [_job(launch, io) for launch in sg.select_gather_launches(8, seq_len, hidden_size, seq_len // 2, dtype)]


def _resources(cubin: bytes) -> tuple[int | None, int | None]:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    fields = dict(part.split(":", 1) for line in out.splitlines() if "REG:" in line for part in line.split())
    return int(fields["REG"]), int(fields["STACK"])


def build(job: tuple, arch: int, dtype: torch.dtype, shape: str) -> KernelBuild:
    """Compile one job for ``sm_<arch>`` and read its registers, spills (stack bytes) and shared memory."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, fn, signature, consts, warps, stages = job
    result = KernelBuild(name, arch, _TRITON_TYPES[dtype], shape, consts, warps, stages)
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
        compiled = triton.compile(
            src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages}
        )
        result.shared_bytes = int(compiled.metadata.shared)
        result.registers, result.spill_bytes = _resources(compiled.asm["cubin"])
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {str(exc)[:500]}"
    return result


DEFAULT_CASES: tuple[tuple[str, torch.dtype, int, int], ...] = (
    # (what, dtype, head dim or hidden size, sequence length)
    ("attention", torch.float16, 64, 128),
    ("attention", torch.float16, 64, 512),
    ("attention", torch.bfloat16, 64, 512),
    ("attention", torch.float16, 128, 128),
    ("attention", torch.float16, 128, 512),
    ("attention", torch.float32, 64, 512),
    ("attention", torch.float32, 128, 512),
    ("attention", torch.float16, 256, 512),
    ("attention", torch.float32, 256, 512),
    ("select_gather", torch.float16, 768, 512),
)


def report(archs: list[int], cases=DEFAULT_CASES) -> list[KernelBuild]:
    """Build every launch of every case for every architecture."""
    builds = []
    for what, dtype, width, seq_len in cases:
        if what == "attention":
            jobs, shape = attention_jobs(dtype, width, seq_len), f"d={width} N={seq_len}"
        else:
            jobs, shape = select_gather_jobs(dtype, seq_len, width), f"D={width} N={seq_len}"
        for arch in archs:
            builds.extend(build(job, arch, dtype, shape) for job in jobs)
    return builds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compile the Triton kernels for NVIDIA GPUs and report resources")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities, e.g. 80 90")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args(argv)
    if type(attn._attention_fwd_kernel).__name__ != "JITFunction":
        print("codegen: the kernels were imported for the interpreter; unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    for b in report(args.arch):
        if args.json:
            print(json.dumps(asdict(b)), flush=True)
        else:
            status = b.error or (
                f"regs {b.registers:3d}  spill {b.spill_bytes:5d} B  shared {b.shared_bytes // 1024:3d} KiB"
            )
            print(f"sm_{b.arch} {b.kernel:22s} {b.dtype:4s} {b.shape:12s} warps {b.num_warps}  {status}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
