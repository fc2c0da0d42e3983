"""benchmarks/profile_cpu.py: the per-op breakdown script runs and writes its tables atomically."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "profile_cpu.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_profile_writes_both_tables(tmp_path):
    output = tmp_path / "profile.md"
    result = run_script(
        "--config", "minilm", "--batch", "2", "--seq-len", "12", "--retention", "10,8,6,4,2,1",
        "--threads", "1", "--forwards", "1", "--top", "5", "--output", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert "## PoWER-BERT" in text and "## Stock, SDPA" in text
    assert "`aten::addmm`" in text and "**total**" in text
    assert "Kept per layer**: [10, 8, 6, 4, 2, 1]" in text
    assert [p.name for p in tmp_path.iterdir()] == ["profile.md"]


def test_profile_refuses_bad_arguments(tmp_path):
    result = run_script("--config", "minilm", "--retention", "3,2")
    assert result.returncode == 2 and "error: --retention" in result.stderr and "Traceback" not in result.stderr
    result = run_script("--config", "minilm", "--retention", "1", "--output", str(tmp_path / "no" / "x.md"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = run_script("--config", "minilm", "--retention", "1", "--threads", "0")
    assert result.returncode == 2 and "argument --threads: expected an int >= 1" in result.stderr
