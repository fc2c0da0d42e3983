"""The Triton kernels compile to machine code for Ampere (sm_80) and Hopper (sm_90) without spilling.

The CPU interpreter cannot see code generation: this compiles the configurations the launchers pick with
the ptxas that ships in Triton's wheel (no GPU needed) and checks each build's register spills and
shared memory. It runs in a subprocess because this test process imported the kernels for the
interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")  # the `triton` extra

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
SHARED_LIMIT = 99 * 1024  # per-block shared memory of consumer Ampere/Ada (sm_86/sm_89), the smallest


@pytest.mark.skipif(
    not (BIN / "ptxas").exists() or not (BIN / "cuobjdump").exists(),
    reason="this Triton build ships no NVIDIA ptxas/cuobjdump",
)
def test_kernels_compile_for_sm80_and_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "powerbert_kernels.triton.codegen", "--arch", "80", "90", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    builds = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert {b["kernel"] for b in builds} == {
        "attention_single_pass",
        "attention_pass1",
        "attention_pass2",
        "select",
        "gather",
    }
    failed = [(b["kernel"], b["arch"], b["dtype"], b["shape"], b["error"]) for b in builds if b["error"]]
    assert not failed, failed
    spilled = [(b["kernel"], b["arch"], b["dtype"], b["shape"], b["spill_bytes"]) for b in builds if b["spill_bytes"]]
    assert not spilled, spilled
    too_big = [
        (b["kernel"], b["arch"], b["shape"], b["shared_bytes"]) for b in builds if b["shared_bytes"] > SHARED_LIMIT
    ]
    assert not too_big, too_big
