"""`powerbert bench --background-load K --threads T`: reproducible load, recorded with the result."""

from __future__ import annotations

import json
import time

import pytest
import torch

from powerbert_kernels.benchmarking import MAX_BACKGROUND_LOAD, background_load
from powerbert_kernels.cli import main


def test_background_load_runs_its_children_and_ends_them():
    with background_load(2) as children:
        assert len(children) == 2
        time.sleep(0.2)
        assert all(child.poll() is None for child in children)
    assert all(child.poll() is not None for child in children)


def test_background_load_ends_its_children_when_the_measurement_fails():
    with pytest.raises(KeyError), background_load(1) as children:
        raise KeyError("measurement failed")
    assert children[0].poll() is not None


def test_background_load_children_stop_by_themselves_after_max_seconds():
    with background_load(1, max_seconds=0.3) as children:
        children[0].wait(timeout=10)
        assert children[0].returncode == 0


def test_no_background_load_starts_nothing():
    with background_load(0) as children:
        assert children == []


@pytest.mark.parametrize("processes", [-1, MAX_BACKGROUND_LOAD + 1, 1.5, True])
def test_background_load_refuses_bad_counts(processes):
    with pytest.raises(ValueError, match="processes must be an int"):
        with background_load(processes):
            pass


def test_bench_records_threads_and_load(capsys):
    threads = torch.get_num_threads()
    try:
        code = main(
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
                "--no-memory",
                "--threads",
                "1",
                "--background-load",
                "1",
                "--json",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["threads"] == 1 and report["cpu_threads"] == 1
    assert report["background_load"] == 1
    assert report["speedup"] > 0


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--threads", "0", "argument --threads: expected an int >= 1, got 0"),
        ("--threads", "two", "argument --threads: expected an int >= 1, got 'two'"),
        ("--background-load", "-1", f"argument --background-load: expected an int from 0 to {MAX_BACKGROUND_LOAD}"),
        ("--background-load", "x", "argument --background-load: expected an int from 0 to"),
    ],
)
def test_bench_refuses_bad_threads_and_load(capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--config", "minilm", option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "powerbert bench: error:" in err and message in err
