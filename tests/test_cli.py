"""The `powerbert` command: demo and bench run end to end and say what they measured; every command
has help and defaults, answers --help without loading torch, and reports user errors cleanly."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import powerbert_kernels
from powerbert_kernels.benchmarking import default_retention
from powerbert_kernels.cli import COMMANDS, build_parser, main
from powerbert_kernels.demo import SENTENCES

REPO = Path(__file__).resolve().parents[1]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``main(argv)``'s exit status (argparse's SystemExit included), stdout and stderr."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(argv: list[str], capsys, message: str) -> str:
    code, out, err = run_cli(argv, capsys)
    assert code == 2, (code, out, err)
    assert f"powerbert {argv[0]}: error: " in err and message in err, err
    assert "Traceback" not in err
    return err


def subprocess_cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env)
    environment["PYTHONPATH"] = str(REPO) + os.pathsep + environment.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, *args], env=environment, capture_output=True, text=True, timeout=300, cwd=REPO
    )


def test_demo_runs_on_the_default_model(minilm_path, capsys):
    assert main(["demo", "--batch", "6", "--repeats", "2", "--no-color"]) == 0
    out = capsys.readouterr().out
    header = re.search(r"kept per layer of (\d+) tokens: \[([\d, ]+)\]", out)
    assert header, out
    n, kept = int(header[1]), [int(x) for x in header[2].split(",")]
    assert len(kept) == 6 and kept == sorted(kept, reverse=True) and 1 <= kept[-1] <= kept[0] <= n, out
    # One block per built-in sentence: its tokens from [CLS] on, then six layers that keep at most as many.
    assert len(re.findall(r"^  input \[CLS\] ", out, re.MULTILINE)) == len(SENTENCES), out
    survivors = [(int(a), int(b)) for a, b in re.findall(r"^  L\d\s+.*\((\d+)/(\d+)\)$", out, re.MULTILINE)]
    assert len(survivors) == 6 * len(SENTENCES) and all(1 <= a <= b for a, b in survivors), out
    cosines = [float(c) for c in re.findall(r"tokens; embedding cosine to the stock model: (-?\d\.\d{4})$", out, re.M)]
    assert len(cosines) == len(SENTENCES) and all(0.5 < c <= 1.0001 for c in cosines), out
    timing = re.search(r"speed-up (\d+\.\d\d)x  \(FLOP ratio (\d+\.\d\d)x, 2 interleaved repeats\)", out)
    assert timing and float(timing[1]) > 0 and float(timing[2]) > 1, out
    assert re.search(r"embedding cosine to the stock model \(SentenceTransformer\.encode\): mean 0\.\d{4}, min", out)


def test_demo_takes_a_model_folder_and_texts(minilm_path, capsys):
    assert (
        main(
            [
                "demo",
                "--model",
                minilm_path,
                "--retention",
                "8,6,5,4,3,2",
                "--text",
                "one two three four five six seven eight nine ten",
                "--batch",
                "2",
                "--repeats",
                "2",
                "--no-color",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "retention: [8, 6, 5, 4, 3, 2]  ->  kept per layer of 12 tokens: [8, 6, 5, 4, 3, 2]" in out, out
    survivors = re.findall(r"^  L(\d)\s+.*\((\d+)/12\)$", out, re.MULTILINE)
    assert [(int(j), int(k)) for j, k in survivors] == [(1, 8), (2, 6), (3, 5), (4, 4), (5, 3), (6, 2)], out


def test_bench_json_has_the_promised_keys(capsys):
    assert (
        main(
            [
                "bench",
                "--config",
                "minilm",
                "--batch",
                "2",
                "--seq-len",
                "16",
                "--retention",
                "12,10,8,6,4,2",
                "--repeats",
                "2",
                "--warmup",
                "1",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        "baseline_ms",
        "power_ms",
        "speedup",
        "flop_ratio",
        "peak_mem_baseline_mb",
        "peak_mem_power_mb",
        "device",
        "torch",
        "date",
    ):
        assert key in report
    assert report["kept_per_layer"] == [12, 10, 8, 6, 4, 2]
    assert report["baseline_ms"] > 0 and report["power_ms"] > 0 and report["flop_ratio"] > 1


def test_default_retention_is_a_valid_configuration():
    for layers in (2, 6, 12, 24):
        r = default_retention(layers)
        assert len(r) == layers and all(0 < x <= 1 for x in r)
        assert all(a >= b for a, b in zip(r, r[1:], strict=False))


def test_info_separates_installed_from_usable(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "triton", "ext"):
        block = out.split(f"\n{name}:\n", 1)[1].splitlines()
        assert block[0].startswith("  installed: ") and block[1].startswith("  usable here: "), out
    torch_block = out.split("\ntorch:\n", 1)[1].splitlines()
    assert torch_block[1] == "  usable here: yes, reference ops, every device"
    triton_block = out.split("\ntriton:\n", 1)[1].splitlines()
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        # Installed or not, Triton cannot run here: the line says why instead of "available".
        assert triton_block[1].startswith("  usable here: no: "), out


def test_version(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"powerbert {powerbert_kernels.__version__}"


def test_every_option_has_help_and_shows_its_default():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == set(COMMANDS)
    for name, sub in subparsers.choices.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[-1]
            assert action.help, f"powerbert {name} {flag} has no help"
            if action.default not in (None, False, True) and not action.required:
                help_text = " ".join(sub._get_formatter()._expand_help(action).split())
                assert "default" in help_text, f"powerbert {name} {flag}: help does not give the default"
        assert "(default: None)" not in text


def test_help_imports_neither_torch_nor_transformers():
    script = (
        "import sys, json\n"
        "from powerbert_kernels.cli import COMMANDS, main\n"
        "loaded = {}\n"
        "for argv in [['--help']] + [[name, '--help'] for name in COMMANDS]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    loaded[' '.join(argv)] = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print(json.dumps(loaded), file=sys.stderr)\n"
    )
    done = subprocess_cli(["-c", script])
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stderr.strip().splitlines()[-1])
    assert len(loaded) == len(COMMANDS) + 1
    assert all(modules == [] for modules in loaded.values()), loaded
    top = subprocess_cli(["-m", "powerbert_kernels.cli", "--help"])
    assert top.returncode == 0 and all(name in top.stdout for name in COMMANDS)


def test_import_is_light():
    done = subprocess_cli(
        [
            "-c",
            "import sys, powerbert_kernels; print(sorted(set(sys.modules) & {'torch', 'transformers', "
            "'triton', 'datasets', 'accelerate', 'matplotlib', 'powerbert_kernels.training'}))",
        ]
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


BENCH = ["bench", "--config", "minilm", "--batch", "1", "--seq-len", "8", "--repeats", "1", "--no-memory"]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*BENCH, "--retention", "4,5,3,2,1,1"], "non-increasing"),
        ([*BENCH, "--retention", "4,3"], "one entry per encoder layer (6)"),
        ([*BENCH, "--seq-len", "600"], "--seq-len 600 exceeds the model's maximum positions (512)"),
        (
            [*BENCH, "--model", "no-such-org/no-such-model"],
            "--model: cannot load a model from 'no-such-org/no-such-model'",
        ),
        (["demo", "--model", "no-such-org/no-such-model"], "--model: cannot load a model from"),
    ],
)
def test_run_time_errors_are_one_clean_line(argv, message, capsys):
    if "--model" in argv and argv[0] == "bench":
        argv = [a for a in argv if a not in ("--config", "minilm")]
    assert_user_error(argv, capsys, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_cuda_without_a_gpu_is_a_clean_error(capsys):
    assert_user_error([*BENCH, "--device", "cuda"], capsys, "--device cuda: no CUDA device is available here")


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*BENCH, "--retention", "a,b"], "argument --retention: retention must be a comma-separated list"),
        ([*BENCH, "--batch", "0"], "argument --batch: expected an int >= 1, got 0"),
        ([*BENCH, "--device", "gpu"], "argument --device: expected cpu, cuda or cuda:N, got 'gpu'"),
        (
            ["predict", "--model", "m", "--input", "i.tsv", "--output", "o.jsonl", "--batch-size", "x"],
            "argument --batch-size: expected an int >= 1, got 'x'",
        ),
    ],
)
def test_bad_option_values_are_argparse_errors(argv, message, capsys):
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and f"powerbert {argv[0]}: error: {message}" in err and "Traceback" not in err, err


def test_a_missing_extra_names_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # importing it now fails as if not installed
    argv = ["train", "--model", "m", "--output-dir", str(tmp_path / "o")]
    argv += ["--train-file", "t.tsv", "--eval-file", "e.tsv"]
    err = assert_user_error(argv, capsys, "needs the optional package 'accelerate'")
    assert "pip install 'powerbert-kernels[train]'" in err


def test_subprocess_error_exit_status_and_debug_traceback():
    argv = ["-m", "powerbert_kernels.cli", *BENCH, "--retention", "4,5,3,2,1,1"]
    clean = subprocess_cli(argv)
    assert clean.returncode == 2 and clean.stderr.startswith("powerbert bench: error: retention")
    assert "Traceback" not in clean.stderr
    debug = subprocess_cli(argv, POWERBERT_DEBUG="1")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ValueError" in debug.stderr
