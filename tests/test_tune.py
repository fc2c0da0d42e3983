"""``powerbert tune`` / :func:`tune_retention`: choosing a configuration without retraining.

A tiny BERT fine-tuned on the keyword task of ``test_training`` (the label is the majority of three
marker words among 12-24 fillers) reaches 100%; keeping the CLS vector and the markers loses nothing, so
the search must go far below the padded length without losing accuracy.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_training import synthetic_task, write_tsv
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from powerbert_kernels import apply_power_bert, is_patched, tune_retention
from powerbert_kernels.cli import main
from powerbert_kernels.training.data import read_table
from powerbert_kernels.training.pipeline import Pipeline, TrainConfig
from powerbert_kernels.training.tune import count_grid


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tune")
    task = synthetic_task(root)
    cfg = TrainConfig(
        model=task["model"],
        output_dir=str(root / "run"),
        train_file=task["train"],
        eval_file=task["dev"],
        max_length=32,
        lr=1e-3,
        epochs=2,
        seed=0,
        eval_strategy="no",
        save_strategy="no",
        progress=False,
    )
    summary = Pipeline(cfg).finetune()
    assert summary["metrics"]["accuracy"] >= 99.0  # the task is learnt
    yield {**task, "finetuned": summary["model_path"]}
    torch.set_num_threads(threads)


def load(finetuned):
    model = AutoModelForSequenceClassification.from_pretrained(finetuned["finetuned"])
    tokenizer = AutoTokenizer.from_pretrained(finetuned["finetuned"])
    rows = read_table(finetuned["dev"])
    texts = [r["sentence"] for r in rows]
    labels = [model.config.label2id[r["label"]] for r in rows]
    return model, tokenizer, texts, labels


def test_count_grid_descends_to_one():
    for n in (2, 7, 32, 64, 512):
        grid = count_grid(n)
        assert grid[0] == n and grid[-1] == 1
        assert all(a > b for a, b in zip(grid, grid[1:], strict=False))
    assert count_grid(64) == [64, 48, 36, 27, 20, 15, 11, 9, 6, 5, 4, 3, 2, 1]


def test_tune_finds_a_fast_configuration_within_the_drop_without_changing_the_model(finetuned):
    model, tokenizer, texts, labels = load(finetuned)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    result = tune_retention(
        model, tokenizer, texts, labels, max_length=32, max_drop=1.0, measure_speed=False, progress=False
    )
    # The caller's model: same weights, unpatched, still in training mode.
    assert not is_patched(model) and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    assert result.metric_name == "accuracy" and result.reference_search >= 99.0
    assert result.num_search + result.num_holdout == len(texts) == 300 and result.num_holdout == 150
    assert result.search_metric >= result.reference_search - 1.0
    assert result.holdout_metric is not None and result.reference_holdout is not None
    retention = result.retention
    assert retention == sorted(retention, reverse=True) and len(retention) == 4
    # The CLS vector and three markers carry the label: far fewer than the ~20 real tokens suffice.
    assert result.flop_ratio >= 3.0 and retention[0] <= 8
    configs = [tuple(e["retention"]) for e in result.tried]
    assert len(configs) == len(set(configs)) == result.evaluations <= 100
    assert all(list(c) == sorted(c, reverse=True) for c in configs)
    within = [e for e in result.tried if e["within"]]
    assert max(e["flop_ratio"] for e in within) == pytest.approx(result.flop_ratio)
    assert all(e["within"] == (e["metric"] >= result.reference_search - 1.0) for e in result.tried)

    # The chosen configuration scores what the search said, applied by hand to the same rows.
    patched = apply_power_bert(AutoModelForSequenceClassification.from_pretrained(finetuned["finetuned"]), retention)
    holdout_rate = 100.0 - result.holdout_metric
    assert 0.0 <= holdout_rate <= 100.0 and patched.config.power_bert_retention == retention


def test_tune_does_not_depend_on_the_batch_size(finetuned):
    model, tokenizer, texts, labels = load(finetuned)
    common = dict(max_length=32, measure_speed=False, progress=False, max_evals=12)
    a = tune_retention(model, tokenizer, texts, labels, batch_size=64, **common)
    b = tune_retention(model, tokenizer, texts, labels, batch_size=7, **common)
    assert [e["retention"] for e in a.tried] == [e["retention"] for e in b.tried]
    assert [e["metric"] for e in a.tried] == [e["metric"] for e in b.tried]
    assert a.retention == b.retention and a.holdout_metric == b.holdout_metric


def test_tune_without_labels_scores_agreement(finetuned):
    model, tokenizer, texts, _ = load(finetuned)
    result = tune_retention(
        model, tokenizer, texts, None, max_length=32, max_drop=0.0, holdout=0.0, measure_speed=False, progress=False
    )
    assert result.metric_name == "agreement" and result.reference_search == 100.0
    assert result.search_metric == 100.0 and result.holdout_metric is None and result.num_holdout == 0
    assert result.flop_ratio > 1.5


def test_tune_api_refuses_bad_input(finetuned):
    model, tokenizer, texts, labels = load(finetuned)
    with pytest.raises(ValueError, match="max_drop must be"):
        tune_retention(model, tokenizer, texts, labels, max_drop=-1.0)
    with pytest.raises(ValueError, match="target_speedup must be > 1"):
        tune_retention(model, tokenizer, texts, labels, target_speedup=1.0)
    with pytest.raises(ValueError, match="at least 20 rows"):
        tune_retention(model, tokenizer, texts[:19], labels[:19])
    with pytest.raises(ValueError, match="single class"):
        tune_retention(model, tokenizer, texts, [0] * len(texts))
    with pytest.raises(ValueError, match="sequence classifier"):
        tune_retention(model.bert, tokenizer, texts, labels)


def run_cli(args, capsys):
    code = main(["tune", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_the_model_report_and_plot(finetuned, tmp_path, capsys):
    out = tmp_path / "tuned"
    args = ["--model", finetuned["finetuned"], "--eval-file", finetuned["dev"], "--output-dir", str(out)]
    code, stdout, _ = run_cli([*args, "--max-length", "32", "--no-progress", "--bench-repeats", "2"], capsys)
    assert code == 0, stdout
    report = json.loads((out / "tune.json").read_text())
    assert report["speedup"] > 0 and report["flop_ratio"] >= 3.0
    assert report["search_metric"] >= report["reference_search"] - 1.0
    assert (out / "tune.png").stat().st_size > 0
    assert f"retention {report['retention']}" in stdout and "held out" in stdout
    # The folder is a model: from_pretrained + apply_power_bert restores the chosen configuration.
    model = apply_power_bert(AutoModelForSequenceClassification.from_pretrained(out))
    assert model.config.power_bert_retention == report["retention"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tuned"]  # no staging folder left behind

    # An existing, non-empty output folder is refused.
    code, _, err = run_cli([*args, "--max-length", "32", "--no-speed"], capsys)
    assert code == 2 and "exists and is not an empty folder" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-drop", "-0.5"], "--max-drop must be >= 0"),
        (["--target-speedup", "1"], "--target-speedup must be > 1"),
        (["--target-speedup", "0.5"], "--target-speedup must be > 1"),
        (["--target-speedup", "2", "--no-speed"], "cannot be combined with --no-speed"),
        (["--max-drop", "1", "--target-speedup", "2"], "alternatives"),
        (["--target-speedup", "1000", "--bench-repeats", "1", "--max-evals", "30"], "best reached is"),
    ],
)
def test_cli_refuses_bad_goals_and_writes_nothing(finetuned, tmp_path, capsys, extra, message):
    out = tmp_path / "tuned"
    base = ["--model", finetuned["finetuned"], "--eval-file", finetuned["dev"], "--output-dir", str(out)]
    code, _, err = run_cli([*base, "--max-length", "32", "--no-progress", *extra], capsys)
    assert code == 2 and err.startswith("powerbert tune: error:") and message in err, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_bad_data_and_models(finetuned, tmp_path, capsys):
    out = tmp_path / "tuned"
    rows = [(r["sentence"], r["label"]) for r in read_table(finetuned["dev"])]
    one_class = write_tsv(tmp_path / "one.tsv", [(s, "yes") for s, _ in rows[:50]])
    few = write_tsv(tmp_path / "few.tsv", rows[:19])
    cases = [
        ([finetuned["finetuned"], one_class], "same label"),
        ([finetuned["finetuned"], few], "at least 20 are needed"),
        ([str(tmp_path / "encoder"), finetuned["dev"]], "is not a sequence classifier"),
    ]
    AutoModelForSequenceClassification.from_pretrained(finetuned["finetuned"]).bert.save_pretrained(
        tmp_path / "encoder"
    )
    for (model, data), message in cases:
        code, _, err = run_cli(["--model", model, "--eval-file", data, "--output-dir", str(out)], capsys)
        assert code == 2 and message in err, err
        assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cli_refuses_a_missing_device(finetuned, tmp_path, capsys):
    out = tmp_path / "tuned"
    args = ["--model", finetuned["finetuned"], "--eval-file", finetuned["dev"], "--output-dir", str(out)]
    code, _, err = run_cli([*args, "--device", "cuda"], capsys)
    assert code == 2 and "--device cuda: no CUDA device" in err and not out.exists()
