"""benchmarks/run_gpu.sh without a GPU: its plan (--dry-run) fits the budget with the targets first and
names only files and sweep sections that exist; a run with a stand-in Python keeps to its deadline,
records every step and leaves a compact summary in $OUT. benchmarks/preflight_gpu_versions.sh: its
dry run names the GPU machine's versions."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_GPU = ROOT / "benchmarks" / "run_gpu.sh"
PREFLIGHT = ROOT / "benchmarks" / "preflight_gpu_versions.sh"
DEVICE_WALL_S = 480  # the essential pass must fit 8 minutes on an H200
STEP = re.compile(r"^  (\S+)\s+expected\s+(\d+) s\s+limit\s+(\d+) s\s+(run|bg|wait)\s+(.*)$")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")


def run_script(script: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def dry_run_plan(tmp_path: Path, *args: str) -> tuple[list[tuple[str, int, int, str, str]], str]:
    results = tmp_path / "results"
    done = run_script(RUN_GPU, "--dry-run", *args, env={"RESULTS": str(results)})
    assert done.returncode == 0, done.stderr
    assert not results.exists(), "a dry run writes nothing"
    steps = [(m[1], int(m[2]), int(m[3]), m[4], m[5]) for line in done.stdout.splitlines() if (m := STEP.match(line))]
    assert steps, done.stdout
    return steps, done.stdout


def expected_total(steps) -> int:
    clock = background_end = 0
    for _, expected, _, kind, _ in steps:
        if kind == "run":
            clock += expected
        elif kind == "bg":
            background_end = clock + expected
        else:
            clock = max(clock, background_end)
    return clock


@pytest.fixture(scope="module")
def sweep_sections() -> set[str]:
    pytest.importorskip("triton")  # the sweep imports the Triton kernels
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_sweep.py"), "--list", "--tune"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return {line.split()[0] for line in done.stdout.splitlines() if line.strip()}


def check_commands_exist(steps, sweep_sections: set[str]) -> None:
    for name, _, _, kind, command in steps:
        if kind == "wait":
            assert command in {n for n, *_ in steps[: steps.index(next(s for s in steps if s[0] == name))]}
            continue
        for word in command.split():
            if re.fullmatch(r"(tests|benchmarks)/\S+\.py", word):
                assert (ROOT / word).is_file(), (name, word)
        sections = re.search(r"--sections (\S+)", command)
        if sections:
            assert set(sections.group(1).split(",")) <= sweep_sections, (name, sections.group(1))


def test_essential_pass_fits_eight_minutes_with_the_targets_first(tmp_path, sweep_sections):
    steps, output = dry_run_plan(tmp_path)
    names = [s[0] for s in steps]
    assert names[:3] == ["env", "build", "targets"]
    assert names.index("targets") < names.index("tests_triton") < names.index("tests_ext")
    assert names.index("build_done") < names.index("tests_ext") < names.index("ext_targets")
    total = expected_total(steps)
    assert f"expected total: {total} s of the 450 s budget" in output
    assert total < 450 <= DEVICE_WALL_S - 30  # the deadline leaves room to pack the results
    targets = next(s for s in steps if s[0] == "targets")[4]
    assert "target_attention,target_select_gather,end_to_end" in targets
    assert any("test_triton_attention.py" in s[4] for s in steps) and any("test_ext_ops.py" in s[4] for s in steps)
    assert any("small_batch" in s[4] for s in steps)
    check_commands_exist(steps, sweep_sections)


def test_full_pass_covers_the_rest_of_the_sweep(tmp_path, sweep_sections):
    steps, output = dry_run_plan(tmp_path, "--full", "--budget", "560")
    assert "budget 560 s" in output
    assert expected_total(steps) < 560
    sections = set()
    for *_, command in steps:
        match = re.search(r"--sections (\S+)", command)
        sections |= set(match.group(1).split(",")) if match else set()
    assert {"attention", "select_gather", "variants", "tune"} <= sections
    check_commands_exist(steps, sweep_sections)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "0"], "--budget needs a whole number"),
        (["--budget"], "--budget"),
        (["--fast"], "unknown argument"),
    ],
)
def test_bad_arguments_are_refused(args, message):
    done = run_script(RUN_GPU, *args)
    assert done.returncode == 2
    assert message in done.stderr and "usage:" in done.stderr


STAND_IN = r"""#!/usr/bin/env bash
# Stands in for python3 on a GPU machine: each step's command answers at once, except small_batch,
# which hangs until its limit stops it.
case "$*" in
    "-c import xdist") exit 1 ;;
    -c*get_device_capability*) echo 9.0 ;;
    -c*) echo "3.12.3 torch 2.11.0+cu130 CUDA 13.0" ;;
    *powerbert_kernels.cli\ info*) echo "device: stand-in GPU" ;;
    *setup.py\ build_ext*) sleep 1; echo "built" ;;
    *--stem\ small_batch*) sleep 600 ;;
    *gpu_sweep.py*)
        out=$(echo "$*" | sed -E 's/.*--out ([^ ]+).*/\1/'); stem=$(echo "$*" | sed -E 's/.*--stem ([^ ]+).*/\1/')
        printf '# GPU sweep\n\n## Target: stand-in\n\n| what | met |\n|---|---|\n| x | True |\n' >"$out/$stem.md"
        echo '{"sections": {}}' >"$out/$stem.json" ;;
    *pytest*) echo "tests/test_x.py::test_y PASSED"; echo "============ 3 passed, 1 skipped in 0.50s ============" ;;
    *) echo "unexpected: $*" >&2; exit 3 ;;
esac
"""


def test_a_run_keeps_its_deadline_and_reports_every_step(tmp_path):
    python = tmp_path / "python-stand-in"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    results, out = tmp_path / "gpu-results", tmp_path / "out"
    budget = 14
    began = time.monotonic()
    done = run_script(
        RUN_GPU,
        "--budget",
        str(budget),
        env={"PYTHON": str(python), "RESULTS": str(results), "OUT": str(out)},
        timeout=budget + 60,
    )
    elapsed = time.monotonic() - began
    assert done.returncode == 1, done.stdout + done.stderr  # a step timed out, two did not fit
    assert elapsed < budget + 15, elapsed

    summary = (out / "summary.md").read_text()
    status = dict(re.findall(r"^\| (\w+) \| ([^|]+?) \|", summary, flags=re.M))
    for step in ("env", "targets", "tests_triton", "build", "tests_ext", "ext_targets"):
        assert status[step] == "ok", summary
    assert status["small_batch"] == "TIMEOUT", summary
    assert status["bench_ext"] == status["bench_cli"] == "skipped", summary
    assert "3 passed, 1 skipped" in summary  # the tests' outcome in the table
    assert "### Target: stand-in" in summary  # the targets' tables follow, one level down

    files = sorted(p.name for p in out.iterdir())
    assert files == ["results.tar.gz", "summary.md", "targets.json", "targets.md"]
    assert len(files) <= 8
    with tarfile.open(out / "results.tar.gz") as archive:
        names = set(archive.getnames())
    assert {f"gpu-results/{name}" for name in ("summary.md", "targets.log", "build.log", "small_batch.log")} <= names
    assert (results / "summary.md").read_text() == summary
    assert "9.0" not in (results / "build.log").read_text() and "built" in (results / "build.log").read_text()


@pytest.fixture
def sweep_on_cpu(monkeypatch):
    """benchmarks/gpu_sweep.py with its inputs made on the CPU (wall-clock medians)."""
    import torch

    pytest.importorskip("triton")  # the sweep imports the Triton kernels
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _measure
    import gpu_sweep

    monkeypatch.setattr(_measure, "DEVICE", torch.device("cpu"))
    return gpu_sweep


def test_small_batch_section_runs_its_code_path(sweep_on_cpu, monkeypatch):
    # torch.compile itself is exercised by the deployment tests; here it is the identity, which leaves
    # the section's timing, ratios and table to check without minutes of compilation.
    monkeypatch.setattr(sweep_on_cpu.torch, "compile", lambda model, **kwargs: model)
    import torch

    from powerbert_kernels import benchmarking

    tiny = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    monkeypatch.setitem(benchmarking.CONFIGS, "tiny", ("bert", tiny))
    rows, lines = sweep_on_cpu.small_batch(
        batches=(8, 1), seq_len=16, config="tiny", dtype=torch.float32, retention=[0.75, 0.5], repeats=2
    )
    assert [r["B"] for r in rows] == [8, 1]
    for row in rows:
        assert "hf_sdpa_error" not in row and "power_error" not in row, row
        assert row["speedup"] == pytest.approx(row["hf_sdpa_ms"] / row["power_ms"])
        assert row["of_flop_ratio"] == pytest.approx(row["speedup"] / row["flop_ratio"]) and row["flop_ratio"] > 1
    assert isinstance(rows[0]["met"], bool) and "met" not in rows[1]  # the goal is set at B=8
    assert any(line.startswith("| B |") for line in lines)


def test_ext_targets_section_runs_its_code_path(sweep_on_cpu):
    from powerbert_kernels import ext

    if not ext.is_loaded():
        pytest.skip(f"compiled extension not available: {ext.LOAD_ERROR}")
    rows, lines = sweep_on_cpu.ext_targets(
        batch=2, seq_len=32, hidden_size=64, keeps=(8, 16), attention_batch=2, attention_lengths=(16,)
    )
    assert [r["what"].split()[0] for r in rows] == ["select-gather", "select-gather", "attention"]
    assert all(isinstance(r["met"], bool) for r in rows[:2]) and rows[2]["met"] is None
    assert "of copy" in rows[0]["value"] and "SDPA" in rows[2]["value"]
    assert lines[0].startswith("| ext (fp16) |")


def test_preflight_plan_names_the_gpu_images_versions(tmp_path):
    done = run_script(PREFLIGHT, "--dry-run", "--venv", str(tmp_path / "venv"))
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "venv").exists(), "a dry run creates nothing"
    plan = dict(line.strip().split(":", 1) for line in done.stdout.splitlines()[1:])
    assert "torch==2.11.0" in plan["torch"] and "cu130" in plan["torch"]
    assert "triton==3.6.0" in plan["packages"] and "transformers==5.17.0" in plan["packages"]
    makefile_pin = re.search(r"^SETUPTOOLS \?= (.+)$", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    assert f'"{makefile_pin}"' in plan["packages"]
    assert "datasets" not in plan["packages"]  # absent on the GPU image: its tests must skip
    assert 'TORCH_CUDA_ARCH_LIST="8.0;9.0"' in plan["build"] and "POWERBERT_EXT_REQUIRED=1" in plan["build"]
    assert "run_gpu.sh --dry-run" in plan["plan"]


def test_preflight_refuses_bad_arguments():
    done = run_script(PREFLIGHT, "--venv")
    assert done.returncode == 2 and "--venv needs a folder" in done.stderr
    done = run_script(PREFLIGHT, "--download-everything")
    assert done.returncode == 2 and "unknown argument" in done.stderr


def test_the_plans_cli_commands_parse(tmp_path):
    from powerbert_kernels.cli import build_parser

    steps, _ = dry_run_plan(tmp_path)
    commands = [s[4].split() for s in steps if " -m powerbert_kernels.cli " in s[4]]
    assert {c[3] for c in commands} == {"info", "bench"}
    for words in commands:
        args = build_parser().parse_args(words[3:])  # exits 2 on an option the CLI no longer has
        if words[3] == "bench":
            assert (args.device, args.batch, args.seq_len) == ("cuda", 128, 128)


def test_the_full_pass_keeps_the_essential_summary(tmp_path):
    python = tmp_path / "python-stand-in"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    results, out = tmp_path / "gpu-results", tmp_path / "out"
    results.mkdir()
    (results / "summary.md").write_text("the essential pass\n")
    env = {"PYTHON": str(python), "RESULTS": str(results), "OUT": str(out)}
    done = run_script(RUN_GPU, "--full", "--budget", "60", env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (results / "summary.md").read_text() == "the essential pass\n"
    summary = (results / "summary-full.md").read_text()
    assert re.findall(r"^\| (\w+) \| ok \|", summary, flags=re.M) == ["env", "build", "sweep", "tune"]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["results.tar.gz", "summary.md", "sweep.json", "sweep.md", "tune.json", "tune.md"]
    assert (out / "summary.md").read_text() == summary
