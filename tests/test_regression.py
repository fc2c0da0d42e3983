"""Regression tasks (STS-B style): real-valued labels select one output trained with the MSE loss, scored
with the Pearson and Spearman correlations, through ``train``, ``eval``, ``tune`` and ``predict``.

The task is built here: every sentence hides zero to four marker words (``pos``/``neg``) among 12-24
filler words, and its score is 0.75 per ``pos`` marker plus 0.25 per ``neg`` marker. A tiny random-init
BERT with a word-level tokenizer learns to count them.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from test_training import FILLERS, MARKERS, cli_error, synthetic_task, write_tsv
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from powerbert_kernels import tune_retention
from powerbert_kernels.cli import main
from powerbert_kernels.training.data import load_local, read_table
from powerbert_kernels.training.metrics import pearson, ranks, regression_metrics, spearman

# ---------------------------------------------------------------------------------------------- metrics


def test_pearson_and_spearman_match_their_definitions():
    rng = np.random.default_rng(0)
    labels = rng.normal(size=300)
    predictions = labels + rng.normal(scale=0.5, size=300)
    assert pearson(predictions, labels) == pytest.approx(100 * np.corrcoef(predictions, labels)[0, 1])
    # Spearman is Pearson of the ranks; a monotone transform of the predictions does not change it.
    want = 100 * np.corrcoef(np.argsort(np.argsort(predictions)), np.argsort(np.argsort(labels)))[0, 1]
    assert spearman(predictions, labels) == pytest.approx(want)
    assert spearman(np.exp(predictions), labels) == pytest.approx(want)
    assert pearson(np.exp(predictions), labels) < want
    # Ties share the mean of their ranks.
    assert ranks([3.0, 1.0, 3.0, 2.0, 3.0]).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert spearman([1, 2, 2, 3], [10, 20, 20, 30]) == pytest.approx(100.0)
    assert pearson([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-100.0)
    # A large common offset loses no digits.
    assert pearson(1e8 + predictions, labels) == pytest.approx(pearson(predictions, labels), abs=1e-6)
    assert regression_metrics([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]) == {"pearson": 0.0, "spearman": 0.0}
    with pytest.raises(ValueError, match="same length"):
        pearson([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        spearman([1.0, float("nan")], [1.0, 2.0])


# ---------------------------------------------------------------------------------------------- data


def score_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(FILLERS) for _ in range(rng.randint(12, 24))]
        marks = [rng.choice(MARKERS) for _ in range(rng.randint(0, 4))]
        for mark in marks:
            words.insert(rng.randint(0, len(words)), mark)
        rows.append((" ".join(words), f"{0.75 * marks.count('pos') + 0.25 * marks.count('neg'):.3f}"))
    return rows


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("regression")
    files = synthetic_task(root)  # the tiny BERT (a 2-label head, replaced by phase 1) and its tokenizer
    files["train"] = write_tsv(root / "scores_train.tsv", score_rows(800, seed=1))
    files["dev"] = write_tsv(root / "scores_dev.tsv", score_rows(200, seed=2))
    return files


def test_real_valued_labels_select_regression(tmp_path):
    rows = [("a b", "3.800"), ("c", "5"), ("d e", "0.25"), ("f", "1e-1")]
    path = write_tsv(tmp_path / "scores.tsv", rows)
    data = load_local(path, path)
    assert data.regression and data.num_labels == 1 and data.id2label == {}
    assert [r["labels"] for r in data.train] == [3.8, 5.0, 0.25, 0.1]
    # Whole numbers alone are class ids, as before; a regression model reads them as numbers.
    ints = write_tsv(tmp_path / "ints.tsv", [("a", "1"), ("b", "0"), ("c", "2")])
    assert not load_local(ints, ints).regression
    assert [r["labels"] for r in load_local(ints, None, regression=True).eval] == [1.0, 0.0, 2.0]
    # JSON keeps 5 and 5.0 apart; "nan" or "inf" are names, not numbers.
    (tmp_path / "s.jsonl").write_text('{"sentence": "a", "label": 2.5}\n{"sentence": "b", "label": 1}\n')
    assert load_local(str(tmp_path / "s.jsonl"), str(tmp_path / "s.jsonl")).regression
    names = write_tsv(tmp_path / "names.tsv", [("a", "nan"), ("b", "inf")])
    assert not load_local(names, names).regression


def test_mixed_labels_are_refused_naming_file_and_line(task, tmp_path, capsys):
    pytest.importorskip("accelerate")  # train loads it before it reads the data
    out = tmp_path / "out"

    def train(train_file: str, eval_file: str, *extra: str) -> str:
        argv = ["train", "--model", task["model"], "--train-file", train_file, "--eval-file", eval_file]
        return cli_error([*argv, "--output-dir", str(out), *extra], capsys)

    mixed = write_tsv(tmp_path / "mixed.tsv", [("w1 pos", "0.5"), ("w2 neg", "1.25"), ("w3", "positive")])
    err = train(mixed, task["dev"])
    assert f"--train-file: {mixed} line 4: label 'positive' is not a number" in err
    assert "mixes numbers (line 2: '0.5') and class names" in err
    # A regression training file with a classification eval file, and a classification metric.
    classes = write_tsv(tmp_path / "classes.tsv", [("w1 pos", "yes"), ("w2 neg", "no")])
    err = train(task["train"], classes)
    assert f"--eval-file: {classes} line 2: label 'yes' is not a number; the training labels" in err
    assert "--metric accuracy scores classes, but the task is a regression" in train(
        task["train"], task["dev"], "--metric", "accuracy"
    )
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(task, tmp_path_factory):
    pytest.importorskip("datasets")
    pytest.importorskip("accelerate")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from a second thread on a shared machine
    out = tmp_path_factory.mktemp("run") / "out"
    argv = [
        "train",
        "--model",
        task["model"],
        "--train-file",
        task["train"],
        "--eval-file",
        task["dev"],
        "--output-dir",
        str(out),
        "--max-length",
        "32",
        "--lr",
        "1e-3",
        "--epochs",
        "8",
        "--search-epochs",
        "3",
        "--retrain-epochs",
        "3",
        "--lambda",
        "3e-4",
        "--seed",
        "0",
        "--no-progress",
        "--bench-repeats",
        "1",
        "--eval-strategy",
        "no",
        "--save-strategy",
        "no",
    ]
    try:
        assert main(argv) == 0
        yield {**task, "out": out, "report": json.loads((out / "report.json").read_text())}
    finally:
        torch.set_num_threads(threads)


def test_train_fits_a_regression_head(trained):
    report = trained["report"]
    assert report["task"] == "regression" and report["metric_name"] == "pearson"
    assert set(report["metrics"]) == {"pearson", "spearman"} and report["labels"] == {}
    assert report["baseline_metric"] >= 90.0  # the scores are learnt
    # Counting the markers needs only them and the CLS vector: the search drops most of the rest.
    assert report["power_metric"] >= report["baseline_metric"] - 2.0
    assert report["flop_ratio"] >= 2.0 and report["search_settled"] is True
    retention = report["retention"]
    assert retention == sorted(retention, reverse=True) and retention[0] <= 12
    config = AutoConfig.from_pretrained(trained["out"])
    assert config.num_labels == 1 and config.problem_type == "regression"
    assert config.power_bert_retention == retention


def test_eval_scores_the_saved_model_with_correlations(trained, tmp_path, capsys):
    result_file = tmp_path / "eval.json"
    argv = ["eval", "--model", str(trained["out"]), "--eval-file", trained["dev"], "--max-length", "32"]
    assert main([*argv, "--no-speed", "--metric", "spearman", "--output", str(result_file)]) == 0
    result = json.loads(result_file.read_text())
    assert result["task"] == "regression" and result["metric_name"] == "spearman"
    assert result["power_metrics"]["pearson"] == pytest.approx(trained["report"]["power_metric"], abs=1e-3)
    assert "spearman: PoWER-BERT" in capsys.readouterr().out
    # Class names in the eval file of a regression model: the file and the line.
    classes = write_tsv(tmp_path / "classes.tsv", [("w1 pos", "1.5"), ("w2 neg", "high")])
    err = cli_error(["eval", "--model", str(trained["out"]), "--eval-file", classes, "--max-length", "32"], capsys)
    assert f"{classes} line 3: label 'high' is not a number" in err


def test_tune_with_and_without_labels(trained, tmp_path, capsys):
    base = ["tune", "--model", str(trained["out"] / "finetune"), "--eval-file", trained["dev"], "--max-length", "32"]
    base += ["--no-speed", "--no-progress"]
    assert main([*base, "--output-dir", str(tmp_path / "labels")]) == 0
    report = json.loads((tmp_path / "labels" / "tune.json").read_text())
    assert report["metric_name"] == "pearson" and report["reference_search"] >= 90.0
    assert report["search_metric"] >= report["reference_search"] - 1.0 and report["flop_ratio"] > 1.0
    assert AutoConfig.from_pretrained(tmp_path / "labels").power_bert_retention == report["retention"]
    # Without labels: Pearson of the patched scores with the unpatched ones.
    assert main([*base, "--no-labels", "--output-dir", str(tmp_path / "agreement")]) == 0
    report = json.loads((tmp_path / "agreement" / "tune.json").read_text())
    assert report["metric_name"] == "agreement" and report["reference_search"] == pytest.approx(100.0)
    assert 99.0 <= report["search_metric"] <= 100.0 + 1e-9
    # One value in every row: no correlation to keep.
    same = write_tsv(tmp_path / "same.tsv", [(f"w{i} pos", "1.5") for i in range(30)])
    err = cli_error([*base[:4], same, *base[5:], "--output-dir", str(tmp_path / "same")], capsys)
    assert "every row has the same label (1.5)" in err and not (tmp_path / "same").exists()


def test_predict_writes_scores(trained, tmp_path, capsys):
    out = tmp_path / "scores.jsonl"
    argv = ["predict", "--model", str(trained["out"]), "--input", trained["dev"], "--output", str(out)]
    assert main([*argv, "--max-length", "32", "--compare", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(r) == {"score"} and isinstance(r["score"], float) for r in records)
    labels = [float(line.split("\t")[1]) for line in open(trained["dev"]).read().splitlines()[1:]]
    assert len(records) == len(labels)
    # The scores in input order: their correlation with the labels is the one eval reports.
    got = pearson([r["score"] for r in records], labels)
    assert got == pytest.approx(trained["report"]["power_metric"], abs=1e-2)
    assert "scores of the same weights unpatched correlate at Pearson" in printed


def test_tune_retention_takes_real_labels(trained):
    path = trained["out"] / "finetune"
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = read_table(trained["dev"])
    texts, labels = [r["sentence"] for r in rows], [float(r["label"]) for r in rows]
    quick = dict(max_length=32, measure_speed=False, progress=False, max_evals=8)
    with pytest.raises(ValueError, match="metric accuracy scores classes, but the task is a regression"):
        tune_retention(model, tokenizer, texts, labels, metric="accuracy", **quick)
    with pytest.raises(ValueError, match="labels: every row has the same value"):
        tune_retention(model, tokenizer, texts, [2.5] * len(texts), **quick)
    result = tune_retention(model, tokenizer, texts, labels, metric="spearman", **quick)
    assert result.metric_name == "spearman" and result.reference_search >= 90.0
    assert result.evaluations <= 8 and result.search_metric >= result.reference_search - 1.0
