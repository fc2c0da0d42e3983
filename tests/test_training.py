"""The training pipeline: metrics, data loading, input errors, the search trainer, and an end-to-end run.

The end-to-end run uses a synthetic task the test builds itself: every sentence hides three marker words
(``pos``/``neg``) among 12-24 filler words, and the label is the majority marker. A tiny random-init
BERT with a word-level tokenizer learns it to 100%; a correct configuration search then drops almost
every vector, and the vectors the re-trained model keeps must be the markers.
"""

from __future__ import annotations

import json
import random
import re
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from powerbert_kernels import apply_power_bert
from powerbert_kernels.cli import main
from powerbert_kernels.models.soft_extract import SoftExtract, soft_extracts
from powerbert_kernels.training import SoftExtractTrainer, TrainConfig, select_run
from powerbert_kernels.training.data import build_label_mapping, load_local, read_table
from powerbert_kernels.training.metrics import accuracy, all_metrics, f1_score, matthews_corrcoef
from powerbert_kernels.training.pipeline import Pipeline, derive_soft_lr, mass_settled

MARKERS = ("pos", "neg")
FILLERS = tuple(f"w{i}" for i in range(40))
NUM_MARKERS = 3


@pytest.fixture
def one_thread():
    # A tiny model gains nothing from a second thread, and on a shared 2-core machine two threads that
    # spin-wait for each other are several times slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tsv(path, rows, header=("sentence", "label")):
    with open(path, "w") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(map(str, row)) + "\n")
    return str(path)


def synthetic_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(FILLERS) for _ in range(rng.randint(12, 24))]
        marks = [rng.choice(MARKERS) for _ in range(NUM_MARKERS)]
        for mark in marks:
            words.insert(rng.randint(0, len(words)), mark)
        rows.append((" ".join(words), "yes" if marks.count("pos") * 2 > NUM_MARKERS else "no"))
    return rows


def synthetic_task(root) -> dict[str, str]:
    """A tiny BERT + word-level tokenizer folder and train/dev TSV files under ``root``."""
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *MARKERS, *FILLERS]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=2,
    )
    model_dir = root / "tiny-bert"
    BertForSequenceClassification(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return {
        "model": str(model_dir),
        "train": write_tsv(root / "train.tsv", synthetic_rows(1200, seed=1)),
        "dev": write_tsv(root / "dev.tsv", synthetic_rows(300, seed=2)),
    }


# ---------------------------------------------------------------------------------------------- metrics


def test_binary_metrics_by_hand():
    preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 0, 1]
    # TP 2, FP 1, TN 2, FN 0.
    assert accuracy(preds, labels) == pytest.approx(80.0)
    assert matthews_corrcoef(preds, labels) == pytest.approx(100 * (2 * 2 - 1 * 0) / np.sqrt(3 * 2 * 3 * 2))
    assert f1_score(preds, labels) == pytest.approx(100 * 2 * 2 / (2 * 2 + 1 + 0))
    assert matthews_corrcoef([1, 1, 1], [0, 1, 1]) == 0.0  # constant predictions: MCC 0 by convention
    assert matthews_corrcoef([0, 1, 0], [1, 0, 1]) == pytest.approx(-100.0)


def test_multiclass_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 3, 200))
    # MCC as the correlation of the one-hot indicator matrices (its K-class definition).
    x, y = np.eye(3)[preds], np.eye(3)[labels]
    xc, yc = x - x.mean(0), y - y.mean(0)
    want = (xc * yc).sum() / np.sqrt((xc * xc).sum() * (yc * yc).sum())
    assert matthews_corrcoef(preds, labels) == pytest.approx(100 * want)
    per_class = []
    for k in range(3):
        tp = np.sum((preds == k) & (labels == k))
        per_class.append(2 * tp / (np.sum(preds == k) + np.sum(labels == k)))
    assert f1_score(preds, labels) == pytest.approx(100 * np.mean(per_class))
    assert set(all_metrics(preds, labels)) == {"accuracy", "mcc", "f1"}
    with pytest.raises(ValueError, match="same length"):
        accuracy([1, 0], [1])


# ---------------------------------------------------------------------------------------------- data


def test_reads_csv_tsv_json_and_jsonl(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"hello, world",pos\nplain,neg\n')
    (tmp_path / "a.tsv").write_text("sentence\tlabel\nit's \"quoted\t1\n")
    (tmp_path / "a.json").write_text(json.dumps([{"text": "x", "label": 1}, {"text": "y", "label": 0}]))
    (tmp_path / "a.jsonl").write_text('{"text": "x", "label": "a"}\n\n{"text": "y", "label": "b"}\n')
    assert read_table(str(tmp_path / "a.csv")) == [
        {"text": "hello, world", "label": "pos"},
        {"text": "plain", "label": "neg"},
    ]
    assert read_table(str(tmp_path / "a.tsv")) == [{"sentence": "it's \"quoted", "label": "1"}]
    assert read_table(str(tmp_path / "a.json"))[1] == {"text": "y", "label": 0}
    assert [r["label"] for r in read_table(str(tmp_path / "a.jsonl"))] == ["a", "b"]


def test_label_mappings():
    assert build_label_mapping(["pos", "neg", "pos"]) == {0: "neg", 1: "pos"}
    assert build_label_mapping(["10", 2, "2", 1.0]) == {0: "1", 1: "2", 2: "10"}  # ints in numeric order
    known = {"negative": 1, "positive": 0}
    assert build_label_mapping(["negative", "positive"], known) == {0: "positive", 1: "negative"}
    with pytest.raises(ValueError, match="not in the model's label mapping"):
        build_label_mapping(["negative", "neutral"], known)
    with pytest.raises(ValueError, match="single class"):
        build_label_mapping(["a", "a"])


def test_load_local_maps_string_labels_and_checks_eval_labels(tmp_path):
    train = write_tsv(tmp_path / "train.tsv", [("a b", "pos"), ("c", "neg")])
    dev = write_tsv(tmp_path / "dev.tsv", [("d", "neg")])
    data = load_local(dev, train)
    assert data.id2label == {0: "neg", 1: "pos"}
    assert data.train[0]["labels"] == 1 and data.eval[0]["labels"] == 0
    bad = write_tsv(tmp_path / "bad.tsv", [("d", "neg"), ("e", "maybe")])
    with pytest.raises(ValueError, match=r"--eval-file: .* labels not seen in the training data: \['maybe'\]"):
        load_local(bad, train)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("sentence\tlabel\n", "no data rows"),
        ("text\tlabel\nhello\t1\n", "no column 'sentence'.*--text-column.*available columns: text, label"),
        ("sentence\tgold\nhello\t1\n", "no column 'label'.*--label-column"),
        ("sentence\tlabel\nhello\t1\textra\n", "line 2 has 3 fields"),
    ],
)
def test_bad_files_are_refused_with_the_argument_named(tmp_path, content, message):
    good = write_tsv(tmp_path / "good.tsv", [("a", 0), ("b", 1)])
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_local(good, str(path))
    assert "--train-file" in str(info.value)


def test_bad_json_and_extensions(tmp_path):
    (tmp_path / "rows.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object per row"):
        read_table(str(tmp_path / "rows.json"), "--train-file")
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown extension"):
        read_table(str(tmp_path / "rows.txt"))
    with pytest.raises(FileNotFoundError, match="--eval-file: no such file"):
        read_table(str(tmp_path / "missing.tsv"), "--eval-file")


# ---------------------------------------------------------------------------------------------- CLI input errors


@pytest.fixture
def task(tmp_path):
    return synthetic_task(tmp_path)


@pytest.fixture
def train_command():
    """`powerbert train` loads accelerate (its process state) before it reads the data and the model."""
    pytest.importorskip("accelerate")


@pytest.fixture
def training_stack():
    """Training itself: ``datasets`` holds the tokenized data, ``Trainer`` needs accelerate."""
    pytest.importorskip("datasets")
    pytest.importorskip("accelerate")


def cli_error(argv: list[str], capsys) -> str:
    """Run the command expecting a user error: exit status 2 and one clean line on stderr."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"powerbert {argv[0]}: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "extra, message, reads_data",
    [
        (["--lambda", "-0.001"], "--lambda must be >= 0", False),
        (["--max-length", "1"], "--max-length must be an int >= 2", False),
        (["--max-length", "100"], "exceeds the model's maximum positions", True),
        (["--text-column", "text"], "no column 'text'", True),
        (["--label-column", "gold"], "no column 'gold'", True),
        (["--lr", "0"], "--lr must be a positive number", False),
        (["--metric", "mcc", "--from-finetuned", "--from-searched"], "alternatives", False),
    ],
)
def test_cli_refuses_bad_input_before_training(task, tmp_path, extra, message, reads_data, capsys):
    if reads_data:  # options are checked at once; the data and the model after accelerate has loaded
        pytest.importorskip("accelerate")
    out = tmp_path / "out"
    args = [
        "train",
        "--model",
        task["model"],
        "--train-file",
        task["train"],
        "--eval-file",
        task["dev"],
        "--output-dir",
        str(out),
        *extra,
    ]
    assert re.search(message, cli_error(args, capsys))
    assert not out.exists()  # nothing was trained or written


def test_cli_refuses_unknown_labels_and_empty_files(task, tmp_path, capsys, train_command):
    dev = write_tsv(tmp_path / "dev_bad.tsv", [("w1 pos", "yes"), ("w2 neg", "perhaps")])
    out = str(tmp_path / "out")
    argv = ["train", "--model", task["model"], "--train-file", task["train"], "--eval-file", dev, "--output-dir", out]
    assert "labels not seen in the training data: ['perhaps']" in cli_error(argv, capsys)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    argv = [
        "train",
        "--model",
        task["model"],
        "--train-file",
        str(empty),
        "--eval-file",
        task["dev"],
        "--output-dir",
        out,
    ]
    assert re.search("--train-file: .*empty", cli_error(argv, capsys))


def test_config_validation_names_the_argument(task, tmp_path):
    base = dict(model=task["model"], output_dir=str(tmp_path / "o"), train_file=task["train"], eval_file=task["dev"])
    for kwargs, message in [
        (dict(lambdas=(-1e-3,)), "--lambda must be >= 0"),
        (dict(lambdas=()), "at least one"),
        (dict(max_length=1), "--max-length"),
        (dict(batch_size=0), "--batch-size"),
        (dict(train_file=None), "--train-file"),
        (dict(retention=[3, 2, 1, 1]), "only with --from-searched"),
    ]:
        with pytest.raises(ValueError, match=message):
            Pipeline(TrainConfig(**{**base, **kwargs}))


def test_select_run_prefers_fastest_within_the_allowed_drop():
    runs = [
        {"metrics": {"accuracy": 90.0}, "flop_ratio": 2.0},
        {"metrics": {"accuracy": 89.5}, "flop_ratio": 3.0},
        {"metrics": {"accuracy": 85.0}, "flop_ratio": 6.0},
    ]
    assert select_run(runs, 90.2, "accuracy", 1.0) is runs[1]
    assert select_run(runs, 95.0, "accuracy", 1.0) is runs[0]  # none close: the best metric


# ---------------------------------------------------------------------------------------------- the search trainer


def test_search_trainer_gives_r_its_own_group_and_clips(task, tmp_path, one_thread, training_stack):
    from transformers import DataCollatorWithPadding, TrainingArguments

    from powerbert_kernels.training.data import tokenize

    tokenizer = AutoTokenizer.from_pretrained(task["model"])
    data = load_local(task["dev"], task["dev"])
    dataset = tokenize(data.train[:64], tokenizer, data, 32)
    model = AutoModelForSequenceClassification.from_pretrained(task["model"])
    apply_power_bert(model, extracts=[SoftExtract(32) for _ in range(4)])
    args = TrainingArguments(
        output_dir=str(tmp_path / "t"),
        per_device_train_batch_size=16,
        num_train_epochs=1,
        learning_rate=1e-4,
        weight_decay=0.1,
        save_strategy="no",
        report_to="none",
        logging_steps=2,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = SoftExtractTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
        retention_lambda=10.0,
        soft_lr=0.5,
    )
    optimizer = trainer.create_optimizer()
    r_ids = {id(e.r) for e in soft_extracts(model)}
    r_groups = [g for g in optimizer.param_groups if any(id(p) in r_ids for p in g["params"])]
    assert len(r_groups) == 1 and {id(p) for p in r_groups[0]["params"]} == r_ids
    assert r_groups[0]["lr"] == 0.5 and r_groups[0]["weight_decay"] == 0.0
    trainer.train()
    for e in soft_extracts(model):
        assert e.r.min() >= 0 and e.r.max() <= 1
        assert (e.r == 0).any()  # a huge penalty and learning rate: clipped at 0, not below
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all(f"mass_{j}" in logged[0] for j in range(1, 5))


def test_soft_lr_follows_the_search_length():
    # Reach = peak rate x steps / 2 under the warm-up/decay schedule: 3 range-widths whatever the size.
    for steps in (20, 113, 650, 5000):
        assert derive_soft_lr(steps) * steps / 2 == pytest.approx(3.0)
    assert derive_soft_lr(650) == pytest.approx(9.23e-3, rel=1e-3)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        derive_soft_lr(0)


def test_mass_settled_reads_the_last_tenth_of_the_steps():
    moving = {step: [64.0 - 0.2 * step, 30.0] for step in range(1, 101)}
    assert mass_settled(moving, 100) == (False, pytest.approx(0.2 * 10))
    still = {**moving, **{step: [44.0, 30.0] for step in range(85, 101)}}
    assert mass_settled(still, 100) == (True, 0.0)
    # A late resume records only the end: unknown, not settled.
    assert mass_settled({100: [1.0, 1.0]}, 100) == (None, None)


# ---------------------------------------------------------------------------------------------- end to end


def kept_markers(model_dir: str, dev: str) -> list[tuple[int, float]]:
    """Per layer: vectors kept, and the fraction of rows whose kept non-CLS vectors are as many markers
    as fit (``min(l_j - 1, markers in the row)``)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = apply_power_bert(AutoModelForSequenceClassification.from_pretrained(model_dir)).eval()
    sentences = [row["sentence"] for row in read_table(dev)]
    batch = tokenizer(sentences, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model.bert(**batch)
    ids = batch["input_ids"]
    is_marker = torch.zeros_like(ids, dtype=torch.bool)
    for token in MARKERS:
        is_marker |= ids == tokenizer.convert_tokens_to_ids(token)
    result = []
    for kept in out.layer_kept_indices:
        found = is_marker.gather(1, kept)[:, 1:].sum(dim=1)
        want = torch.clamp(is_marker.sum(dim=1), max=kept.shape[1] - 1)
        result.append((kept.shape[1], (found == want).float().mean().item()))
    return result


def test_end_to_end_learns_to_keep_the_markers(task, tmp_path, one_thread, training_stack):
    out = tmp_path / "run"
    common = [
        "--train-file",
        task["train"],
        "--eval-file",
        task["dev"],
        "--max-length",
        "32",
        "--lr",
        "1e-3",
        "--batch-size",
        "32",
        "--seed",
        "0",
        "--no-progress",
        "--bench-repeats",
        "2",
        "--eval-strategy",
        "no",
        "--logging-steps",
        "10",
    ]
    assert (
        main(
            [
                "train",
                "--model",
                task["model"],
                "--output-dir",
                str(out),
                "--lambda",
                "1e-3",
                "--epochs",
                "3",
                "--keep-checkpoints",
                *common,
            ]
        )
        == 0
    )

    report = json.loads((out / "report.json").read_text())
    for key in (
        "metric_name",
        "baseline_metric",
        "power_metric",
        "retention",
        "flop_ratio",
        "speedup",
        "phase_seconds",
        "flop_ratio_eval_set",
        "kept_per_layer",
    ):
        assert key in report, key
    assert set(report["phase_seconds"]) == {"finetune", "search", "retrain"}
    assert report["metric_name"] == "accuracy"
    assert report["baseline_metric"] >= 95.0  # the task is learnable
    assert report["power_metric"] >= report["baseline_metric"] - 1.0
    retention = report["retention"]
    assert retention == sorted(retention, reverse=True) and retention[-1] >= 1
    # The search dropped most of the ~20 real vectors: at most the CLS and the three markers, and a few more.
    assert retention[0] <= 8 and retention[-1] <= 4
    assert report["flop_ratio"] >= 3.0
    # The default learning rate of r follows the search's length (113 steps here): the search converged.
    assert report["search_settled"] is True
    assert report["soft_lr"] == pytest.approx(derive_soft_lr(3 * 38))
    assert report["speedup"] > 0
    assert (out / "retention.png").stat().st_size > 0

    # The final model loads with from_pretrained + apply_power_bert, keeps its labels and keeps the markers.
    config = AutoModelForSequenceClassification.from_pretrained(out).config
    assert config.id2label == {0: "no", 1: "yes"} and config.power_bert_retention == retention
    per_layer = kept_markers(str(out), task["dev"])
    assert [k for k, _ in per_layer] == retention
    for kept, fraction in per_layer:
        if kept > 1:
            assert fraction >= 0.95, per_layer

    # `powerbert eval` scores the saved model the same way.
    result_file = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(out),
                "--eval-file",
                task["dev"],
                "--max-length",
                "32",
                "--bench-repeats",
                "2",
                "--output",
                str(result_file),
            ]
        )
        == 0
    )
    result = json.loads(result_file.read_text())
    assert result["power_metric"] == pytest.approx(report["power_metric"])
    assert result["flop_ratio"] > 1 and result["speedup"] > 0

    # Resuming: phase 1 is complete and re-used; the search, as if interrupted after its last checkpoint,
    # continues from it (r included: the same configuration comes out); phase 3 runs again.
    search = out / "lambda_0.001" / "search"
    assert [p.name for p in search.glob("checkpoint-*")]
    (search / "phase.json").unlink()
    shutil.rmtree(out / "lambda_0.001" / "retrain")
    assert (
        main(
            [
                "train",
                "--model",
                task["model"],
                "--output-dir",
                str(out),
                "--lambda",
                "1e-3",
                "--epochs",
                "3",
                "--retrain-epochs",
                "1",
                "--resume",
                *common,
            ]
        )
        == 0
    )
    again = json.loads((out / "report.json").read_text())
    assert again["retention"] == retention and again["baseline_metric"] == report["baseline_metric"]
    assert again["phase_seconds"]["finetune"] == report["phase_seconds"]["finetune"]

    # Skip phase 1 from the fine-tuned model, with a two-value lambda sweep: a trade-off plot.
    sweep = tmp_path / "sweep"
    assert (
        main(
            [
                "train",
                "--model",
                str(out / "finetune"),
                "--from-finetuned",
                "--output-dir",
                str(sweep),
                "--lambda",
                "1e-4",
                "1e-2",
                "--epochs",
                "1",
                "--search-epochs",
                "2",
                *common,
            ]
        )
        == 0
    )
    report = json.loads((sweep / "report.json").read_text())
    assert [r["lambda"] for r in report["runs"]] == [1e-4, 1e-2]
    assert report["baseline_metric"] >= 95.0 and report["phase_seconds"]["finetune"] == 0.0
    assert (sweep / "tradeoff.png").stat().st_size > 0


def test_eval_cli_refuses_a_model_without_configuration(task, capsys):
    argv = ["eval", "--model", task["model"], "--eval-file", task["dev"], "--max-length", "32"]
    assert "stores no PoWER-BERT configuration" in cli_error(argv, capsys)
    assert "--eval-file or --glue-task" in cli_error(
        ["eval", "--model", task["model"], "--retention", "4,3,2,1"], capsys
    )


def test_dynamic_padding_gives_the_logits_of_fixed_padding(task):
    # Training and evaluation pad each batch to its longest row, FLOPs and timing count the fixed N: the
    # two agree because a layer keeps min(l_j, n) vectors and padding ranks last.
    tokenizer = AutoTokenizer.from_pretrained(task["model"])
    model = apply_power_bert(AutoModelForSequenceClassification.from_pretrained(task["model"]), [6, 4, 2, 1]).eval()
    sentences = [row["sentence"] for row in read_table(task["dev"])[:8]]
    dynamic = tokenizer(sentences, padding=True, return_tensors="pt")
    fixed = tokenizer(sentences, padding="max_length", max_length=48, return_tensors="pt")
    assert dynamic["input_ids"].shape[1] < 48
    with torch.no_grad():
        assert torch.allclose(model(**dynamic).logits, model(**fixed).logits, atol=1e-5)
