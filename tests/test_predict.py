"""`powerbert predict`: formats in, JSON lines out in input order, batch independence, errors, distributed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from powerbert_kernels import apply_power_bert
from powerbert_kernels.cli import main

REPO = Path(__file__).resolve().parents[1]
WORDS = ["good", "bad", "film", "plot", "very", "not", "the", "a", "was", "is", "and", "acting", "slow", "fun"]
SENTENCES = [
    "the film was very good",
    "bad",
    "the plot was slow and the acting was bad and not fun",
    "a fun film",
    "not good",
    "the acting is very very good and the plot is fun and the film was not slow at all good good good",
    "slow",
    "good film",
    "the film was bad",
]
RETENTION = [6, 4, 3, 2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A 4-layer BERT classifier with named labels and a stored retention configuration."""
    from transformers import BertTokenizer

    root = tmp_path_factory.mktemp("predict")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    model = apply_power_bert(BertForSequenceClassification(config), RETENTION)
    path = root / "tiny"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def write_tsv(path: Path, sentences, ids=None) -> str:
    lines = ["id\tsentence" if ids else "sentence"]
    for i, s in enumerate(sentences):
        lines.append(f"{ids[i]}\t{s}" if ids else s)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def expected_probabilities(model_path: str, sentences, max_length: int = 32) -> torch.Tensor:
    """Each sentence alone through the patched model: (n, num_labels)."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = apply_power_bert(AutoModelForSequenceClassification.from_pretrained(model_path)).eval()
    rows = []
    with torch.no_grad():
        for s in sentences:
            batch = tokenizer([s], truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(torch.softmax(model(**batch).logits.float(), dim=-1)[0])
    return torch.stack(rows)


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_predicts_in_input_order_with_ids(tiny_model, tmp_path, capsys):
    ids = [f"r{i}" for i in range(len(SENTENCES))]
    source = write_tsv(tmp_path / "in.tsv", SENTENCES, ids)
    out = tmp_path / "out.jsonl"
    code, stdout, stderr = run_cli(
        ["predict", "--model", tiny_model, "--input", source, "--output", str(out), "--batch-size", "4"], capsys
    )
    assert code == 0, stderr
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ids
    expected = expected_probabilities(tiny_model, SENTENCES)
    for record, probs in zip(records, expected, strict=True):
        assert set(record) == {"id", "label", "probabilities"}
        assert list(record["probabilities"]) == ["negative", "positive"]
        got = torch.tensor(list(record["probabilities"].values()))
        # Batched with neighbours of other lengths (sorted by length), the row equals itself alone.
        torch.testing.assert_close(got, probs, atol=2e-6, rtol=0)
        assert record["label"] == ["negative", "positive"][int(probs.argmax())]
    assert f"{len(SENTENCES)} texts" in stdout and "texts/s" in stdout
    assert "FLOP ratio" in stdout and f"0 of {len(SENTENCES)} truncated" in stdout


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_reads_csv_json_and_jsonl_with_pairs(tiny_model, tmp_path, fmt, capsys):
    pairs = [(s, SENTENCES[-1 - i]) for i, s in enumerate(SENTENCES)]
    path = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        path.write_text("a,b\n" + "".join(f'"{a}","{b}"\n' for a, b in pairs))
    elif fmt == "json":
        path.write_text(json.dumps([{"a": a, "b": b} for a, b in pairs], indent=1))
    else:
        path.write_text("".join(json.dumps({"a": a, "b": b}) + "\n" for a, b in pairs))
    out = tmp_path / "out.jsonl"
    argv = ["predict", "--model", tiny_model, "--input", str(path), "--output", str(out)]
    code, _, _ = run_cli([*argv, "--text-column", "a", "--text-pair-column", "b", "--no-progress"], capsys)
    assert code == 0
    records = read_jsonl(out)
    assert len(records) == len(pairs) and all("id" not in r for r in records)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = apply_power_bert(AutoModelForSequenceClassification.from_pretrained(tiny_model)).eval()
    with torch.no_grad():
        a, b = pairs[2]
        probs = torch.softmax(model(**tokenizer([a], [b], return_tensors="pt")).logits, dim=-1)[0]
    torch.testing.assert_close(torch.tensor(list(records[2]["probabilities"].values())), probs, atol=2e-6, rtol=0)


def test_truncation_is_counted_and_compare_reports_agreement(tiny_model, tmp_path, capsys):
    source = write_tsv(tmp_path / "in.tsv", SENTENCES)
    out = tmp_path / "out.jsonl"
    argv = ["predict", "--model", tiny_model, "--input", source, "--output", str(out), "--max-length", "8"]
    code, stdout, _ = run_cli([*argv, "--compare", "--no-progress"], capsys)
    assert code == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    too_long = sum(len(tokenizer(s)["input_ids"]) > 8 for s in SENTENCES)
    assert too_long >= 2
    assert f"{too_long} of {len(SENTENCES)} truncated to --max-length 8" in stdout
    # The reference: the unpatched model's labels on the same truncated texts.
    stock = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        batch = tokenizer(SENTENCES, truncation=True, max_length=8, padding=True, return_tensors="pt")
        stock_labels = stock(**batch).logits.argmax(dim=-1).tolist()
    labels = [["negative", "positive"].index(r["label"]) for r in read_jsonl(out)]
    agree = sum(a == b for a, b in zip(labels, stock_labels, strict=True))
    assert f"agree on {agree} of {len(SENTENCES)} labels" in stdout
    assert "measured speed-up" in stdout


def test_retention_override_changes_the_kept_vectors(tiny_model, tmp_path, capsys):
    source = write_tsv(tmp_path / "in.tsv", SENTENCES)
    full, pruned = tmp_path / "full.jsonl", tmp_path / "pruned.jsonl"
    base = ["predict", "--model", tiny_model, "--input", source, "--no-progress"]
    assert run_cli([*base, "--output", str(full), "--retention", "32,32,32,32"], capsys)[0] == 0
    assert run_cli([*base, "--output", str(pruned), "--retention", "2,1,1,1"], capsys)[0] == 0
    stock = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    with torch.no_grad():
        probs = torch.softmax(stock(**tokenizer([SENTENCES[5]], return_tensors="pt")).logits, dim=-1)[0]
    got_full = torch.tensor(list(read_jsonl(full)[5]["probabilities"].values()))
    got_pruned = torch.tensor(list(read_jsonl(pruned)[5]["probabilities"].values()))
    torch.testing.assert_close(got_full, probs, atol=2e-6, rtol=0)  # keeping everything is the stock model
    assert (got_pruned - probs).abs().max() > 2e-5  # well above the 1e-6 rounding of the output


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.tsv", b"", "empty.tsv is empty"),
        ("header.tsv", b"sentence\n", "has a header (sentence) but no data rows"),
        ("cols.tsv", b"text\nhello\n", "line 2 has no column 'sentence' (named by --text-column); its columns: text"),
        ("bytes.tsv", b"sentence\ngood\nbad \xff film\n", "line 3 is not UTF-8 text"),
        ("bad.jsonl", b'{"sentence": "good"}\n{"sentence": "bad"\n', "bad.jsonl line 2 is not valid JSON"),
        ("list.json", b'[\n {"sentence": "good"},\n 3\n]', "list.json line 3 holds a int"),
        ("fields.tsv", b"id\tsentence\n1\tgood\n2\tbad\tfilm\n", "line 3 has 3 fields but the header has 2"),
        ("blank.jsonl", b'{"sentence": "good"}\n{"sentence": " "}\n', "line 2 has an empty 'sentence'"),
        ("text.txt", b"sentence\ngood\n", "unknown extension '.txt'"),
    ],
)
def test_bad_input_names_file_and_line_and_writes_nothing(tiny_model, tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "out.jsonl"
    code, stdout, stderr = run_cli(
        ["predict", "--model", tiny_model, "--input", str(path), "--output", str(out)], capsys
    )
    assert code == 2
    assert stderr.startswith("powerbert predict: error: --input: ") and message in stderr, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert sorted(os.listdir(tmp_path)) == [name]  # no output file, no temporary left behind


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-length", "64"], "--max-length 64 exceeds the model's maximum positions (32)"),
        (["--retention", "5,6,2,1"], "non-increasing"),
        (["--retention", "5,4,3"], "one entry per encoder layer (4)"),
        (["--device", "cuda:7"], "--device cuda:7: "),
    ],
)
def test_bad_options_are_clean_errors(tiny_model, tmp_path, capsys, extra, message):
    if extra[0] == "--device" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    source = write_tsv(tmp_path / "in.tsv", SENTENCES)
    out = tmp_path / "out.jsonl"
    code, _, stderr = run_cli(
        ["predict", "--model", tiny_model, "--input", source, "--output", str(out), *extra], capsys
    )
    assert code == 2 and stderr.startswith("powerbert predict: error: ") and message in stderr, stderr
    assert not out.exists()


def test_model_without_configuration_and_missing_model(tmp_path, capsys):
    plain = tmp_path / "plain"
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    BertForSequenceClassification(config).save_pretrained(plain)
    source = write_tsv(tmp_path / "in.tsv", ["good"])
    out = str(tmp_path / "out.jsonl")
    code, _, stderr = run_cli(["predict", "--model", str(plain), "--input", source, "--output", out], capsys)
    assert code == 2 and "stores no PoWER-BERT configuration" in stderr and "--retention" in stderr
    missing = str(tmp_path / "nowhere")
    code, _, stderr = run_cli(["predict", "--model", missing, "--input", source, "--output", out], capsys)
    assert code == 2 and stderr.startswith(f"powerbert predict: error: --model: cannot load a model from '{missing}'")


def test_output_is_replaced_only_when_complete(tiny_model, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence": "good"}\n{oops}\n')
    code, _, _ = run_cli(["predict", "--model", tiny_model, "--input", str(bad), "--output", str(out)], capsys)
    assert code == 2 and out.read_text() == "previous\n"
    code, _, stderr = run_cli(["predict", "--model", tiny_model, "--input", str(bad), "--output", str(bad)], capsys)
    assert code == 2 and "is the input file" in stderr


def _cli_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_one_subprocess_run(tiny_model, tmp_path):
    source = write_tsv(tmp_path / "in.tsv", SENTENCES)
    out = tmp_path / "out.jsonl"
    argv = ["--model", tiny_model, "--input", source, "--output", str(out), "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-m", "powerbert_kernels.cli", "predict", *argv],
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(read_jsonl(out)) == len(SENTENCES)
    bad = subprocess.run(
        [sys.executable, "-m", "powerbert_kernels.cli", "predict", *argv[:2], "--input", str(tmp_path / "no.tsv")]
        + ["--output", str(tmp_path / "x.jsonl")],
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("powerbert predict: error: --input: no such file")
    assert "Traceback" not in bad.stderr


def test_two_processes_write_the_single_process_file(tiny_model, tmp_path):
    """torchrun with 2 CPU processes (gloo): the batches are dealt out and one file is written, in order."""
    sentences = [f"{s} {WORDS[i % len(WORDS)]}" for i, s in enumerate(SENTENCES * 3)]
    ids = [f"r{i}" for i in range(len(sentences))]
    source = write_tsv(tmp_path / "in.tsv", sentences, ids)
    single, double = tmp_path / "single.jsonl", tmp_path / "double.jsonl"
    common = ["predict", "--model", tiny_model, "--input", source, "--batch-size", "4", "--no-progress"]
    env = _cli_env()
    one = subprocess.run(
        [sys.executable, "-m", "powerbert_kernels.cli", *common, "--output", str(single)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = subprocess.run(
        [*launch, "-m", "powerbert_kernels.cli", *common, "--output", str(double), "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    assert "x 2 processes" in two.stdout and two.stdout.count("texts/s") == 1  # one summary, from the first
    a, b = read_jsonl(single), read_jsonl(double)
    assert [r["id"] for r in b] == ids and [r["label"] for r in b] == [r["label"] for r in a]
    for ra, rb in zip(a, b, strict=True):
        for name in ra["probabilities"]:
            assert rb["probabilities"][name] == pytest.approx(ra["probabilities"][name], abs=1e-5)
    assert sorted(os.listdir(tmp_path)) == ["double.jsonl", "in.tsv", "single.jsonl"]


def test_inference_needs_neither_triton_nor_the_training_stack(tiny_model, tmp_path):
    """The core install: predict runs with triton, datasets, accelerate and matplotlib not importable."""
    source = write_tsv(tmp_path / "in.tsv", SENTENCES)
    out = tmp_path / "out.jsonl"
    script = (
        "import sys\n"
        "for name in ('triton', 'datasets', 'accelerate', 'matplotlib'):\n"
        "    sys.modules[name] = None  # importing it raises ModuleNotFoundError, as if not installed\n"
        "from powerbert_kernels.cli import main\n"
        f"sys.exit(main(['predict', '--model', {tiny_model!r}, '--input', {source!r}, '--output', {str(out)!r}, "
        "'--no-progress']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(read_jsonl(out)) == len(SENTENCES)
