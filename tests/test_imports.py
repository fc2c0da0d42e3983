"""Importing the package stays light, and what it defers (backends, FLOP formulas) arrives before use.

Each check runs in a fresh interpreter: this test process has long imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("triton", "datasets", "accelerate", "matplotlib", "powerbert_kernels.training")


def run_python(code: str) -> dict:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_import_leaves_the_heavy_packages_out():
    loaded = run_python(
        "import json, sys, powerbert_kernels, powerbert_kernels.ops, powerbert_kernels.models\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert loaded == []


def test_first_call_loads_the_backends_even_inside_torch_compile():
    result = run_python(
        "import json, torch\n"
        "from powerbert_kernels import ops\n"
        "def step(q, mask):\n"
        "    out, sig = ops.attention_with_significance(q, q, q, mask, backend='torch')\n"
        "    return ops.select_gather(out, sig, mask, 3, backend='torch')\n"
        "q, mask = torch.randn(2, 5, 2, 4), torch.ones(2, 5, dtype=torch.bool)\n"
        "got = torch.compile(step, fullgraph=True, backend='eager')(q, mask)\n"
        "want = step(q, mask)\n"
        "print(json.dumps([all(torch.equal(a, b) for a, b in zip(got, want)), ops.available_backends()]))"
    )
    assert result[0] is True
    assert "torch" in result[1]


def test_flop_formulas_are_registered_when_flop_counter_is_imported_later():
    flops = run_python(
        "import json, torch\n"
        "from powerbert_kernels import ops\n"
        "from torch.utils.flop_counter import FlopCounterMode\n"
        "q, mask = torch.randn(2, 5, 3, 4), torch.ones(2, 5, dtype=torch.bool)\n"
        "with FlopCounterMode(display=False) as counter:\n"
        "    ops.attention_with_significance(q, q, q, mask)\n"
        "    ops.attention(q, q, q, mask)\n"
        "print(json.dumps(counter.get_total_flops()))"
    )
    assert flops == 2 * 4 * 2 * 3 * 5 * 5 * 4
