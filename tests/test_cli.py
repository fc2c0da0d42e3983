"""The `powerbert` command: demo and bench run end to end and say what they measured."""

from __future__ import annotations

import json

import pytest

from powerbert_kernels.benchmarking import default_retention
from powerbert_kernels.cli import main


def test_demo_runs_on_the_default_model(minilm_path, capsys):
    assert main(["demo", "--batch", "6", "--repeats", "2", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "L6" in out and "[CLS]" in out
    assert "speed-up" in out and "FLOP ratio" in out
    assert "embedding cosine to the stock model (SentenceTransformer.encode)" in out


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
    assert "(2/12)" in out  # the last layer keeps 2 of the 12 tokens


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


def test_bench_refuses_bad_retention():
    with pytest.raises(ValueError, match="non-increasing"):
        main(
            [
                "bench",
                "--config",
                "minilm",
                "--batch",
                "1",
                "--seq-len",
                "8",
                "--retention",
                "4,5,3,2,1,1",
                "--repeats",
                "1",
                "--no-memory",
            ]
        )


def test_default_retention_is_a_valid_configuration():
    for layers in (2, 6, 12, 24):
        r = default_retention(layers)
        assert len(r) == layers and all(0 < x <= 1 for x in r)
        assert all(a >= b for a, b in zip(r, r[1:], strict=False))


def test_info_reports_every_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("triton:", "ext:", "torch: available"):
        assert name in out
