"""Text-classification data for the three phases: local CSV/TSV/JSON files or GLUE from the hub.

Everything here is checked before any training starts, and every error names the argument (or file)
and what was expected: a missing column, an empty file, a label in the eval file that the training file
does not have, a label the fine-tuned model does not know.

Labels may be strings or ints. Int-like labels (``0``, ``"1"``) are mapped in numeric order, anything
else in sorted order; a fine-tuned model that already has a label mapping (``config.label2id`` with
real names) keeps its own. The mapping is stored in the model's ``config.id2label``/``label2id``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..tables import read_table

LABEL_ID = "labels"
"""Column of the tokenized datasets holding the label id (the name ``Trainer`` passes to the model)."""

# GLUE classification tasks on the hub: text column(s), eval split and the metric the benchmark reports.
GLUE_TASKS: dict[str, dict[str, object]] = {
    "cola": {"text": ("sentence", None), "eval_split": "validation", "metric": "mcc"},
    "sst2": {"text": ("sentence", None), "eval_split": "validation", "metric": "accuracy"},
    "mrpc": {"text": ("sentence1", "sentence2"), "eval_split": "validation", "metric": "f1"},
    "qqp": {"text": ("question1", "question2"), "eval_split": "validation", "metric": "f1"},
    "mnli": {"text": ("premise", "hypothesis"), "eval_split": "validation_matched", "metric": "accuracy"},
    "qnli": {"text": ("question", "sentence"), "eval_split": "validation", "metric": "accuracy"},
    "rte": {"text": ("sentence1", "sentence2"), "eval_split": "validation", "metric": "accuracy"},
    "wnli": {"text": ("sentence1", "sentence2"), "eval_split": "validation", "metric": "accuracy"},
}
GLUE_HUB_ID = "nyu-mll/glue"

_INT_LABEL = re.compile(r"^[+-]?\d+$")
_DEFAULT_LABEL_NAME = re.compile(r"^LABEL_\d+$")


@dataclass
class TextClassificationData:
    """Raw rows of a classification task, with the label mapping fixed.

    Attributes:
        train: training rows (``None`` when only evaluating), each a dict with the text column(s) and
            the label id under :data:`LABEL_ID`.
        eval: evaluation rows, same layout.
        text_column, text_pair_column: the text column(s) (the second one for sentence pairs).
        id2label: label id -> label name, ids 0..K-1.
        source: where the data came from, for the report.
    """

    train: list[dict] | None
    eval: list[dict]
    text_column: str
    text_pair_column: str | None
    id2label: dict[int, str]
    source: dict[str, object] = field(default_factory=dict)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)


def _check_columns(rows: list[dict], columns: Sequence[str], arg: str, path: str, flags: Mapping[str, str]) -> None:
    available = list(rows[0].keys())
    for column in columns:
        for i, row in enumerate(rows):
            if column not in row:
                where = "" if i == 0 else f" (row {i + 1})"
                raise ValueError(
                    f"{arg}: {path} has no column {column!r}{where} (named by {flags[column]}); "
                    f"available columns: {', '.join(map(str, available))}"
                )
            if row[column] is None:
                raise ValueError(f"{arg}: {path} row {i + 1} has an empty {column!r} ({flags[column]})")


def _normalise_label(value: object) -> object:
    # Labels read from CSV/TSV are strings; "1" and 1 must be the same label.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        stripped = value.strip()
        return int(stripped) if _INT_LABEL.match(stripped) else stripped
    return value


def _label_sort_key(value: object) -> tuple:
    return (0, value, "") if isinstance(value, int) else (1, 0, str(value))


def has_named_labels(label2id: Mapping[str, int] | None) -> bool:
    """Whether a model config's ``label2id`` is a real mapping rather than HF's ``LABEL_i`` default."""
    return bool(label2id) and not all(_DEFAULT_LABEL_NAME.match(str(k)) for k in label2id)


def build_label_mapping(labels: Sequence[object], known: Mapping[str, int] | None = None) -> dict[int, str]:
    """id -> name for the labels of the training rows.

    Args:
        labels: every label of the training set (strings or ints).
        known: a fine-tuned model's ``label2id`` with real names: it is kept (every label must be in it).

    Returns:
        ``{0: name_0, ..., K-1: name_K-1}``; ints sorted numerically, strings sorted.
    """
    values = sorted({_normalise_label(v) for v in labels}, key=_label_sort_key)
    if known and has_named_labels(known):
        names = {str(k): int(v) for k, v in known.items()}
        unknown = [v for v in values if str(v) not in names]
        if unknown:
            raise ValueError(
                f"labels {unknown} are not in the model's label mapping (config.label2id: {sorted(names)})"
            )
        return {i: name for name, i in sorted(names.items(), key=lambda kv: kv[1])}
    if len(values) < 2:
        raise ValueError(f"the training labels hold a single class ({values}); classification needs at least two")
    return {i: str(v) for i, v in enumerate(values)}


def _encode_rows(
    rows: list[dict], text: str, pair: str | None, label: str, label2id: Mapping[str, int], arg: str, path: str
) -> list[dict]:
    out, unknown = [], set()
    for row in rows:
        name = str(_normalise_label(row[label]))
        if name not in label2id:
            unknown.add(name)
            continue
        item = {text: str(row[text]), LABEL_ID: label2id[name]}
        if pair is not None:
            item[pair] = str(row[pair])
        out.append(item)
    if unknown:
        raise ValueError(
            f"{arg}: {path} has labels not seen in the training data: {sorted(unknown)} "
            f"(known labels: {sorted(label2id)})"
        )
    return out


def load_local(
    eval_file: str,
    train_file: str | None = None,
    *,
    text_column: str = "sentence",
    text_pair_column: str | None = None,
    label_column: str = "label",
    known_label2id: Mapping[str, int] | None = None,
) -> TextClassificationData:
    """Read a task from local files (see :func:`read_table` for the formats).

    Args:
        eval_file: evaluation rows.
        train_file: training rows; ``None`` to only evaluate (the labels then come from
            ``known_label2id`` or the eval file).
        text_column, text_pair_column, label_column: column names.
        known_label2id: the model's own label mapping, if it has real names.
    """
    flags = {text_column: "--text-column", label_column: "--label-column"}
    columns = [text_column, label_column]
    if text_pair_column is not None:
        flags[text_pair_column] = "--text-pair-column"
        columns.insert(1, text_pair_column)
    train_rows = None
    if train_file is not None:
        train_rows = read_table(train_file, "--train-file")
        _check_columns(train_rows, columns, "--train-file", train_file, flags)
    eval_rows = read_table(eval_file, "--eval-file")
    _check_columns(eval_rows, columns, "--eval-file", eval_file, flags)
    if train_rows is not None:
        id2label = build_label_mapping([r[label_column] for r in train_rows], known_label2id)
    elif known_label2id and has_named_labels(known_label2id):
        id2label = build_label_mapping([r[label_column] for r in eval_rows], known_label2id)
    else:
        # Evaluating a model with HF's default LABEL_i names: the data's labels must be the ids themselves.
        values = {_normalise_label(r[label_column]) for r in eval_rows}
        if not all(isinstance(v, int) for v in values):
            raise ValueError(
                f"--eval-file: labels {sorted(map(str, values))} are names, but the model has no label mapping "
                "(config.label2id holds only LABEL_i); use integer label ids"
            )
        size = max(max(values) + 1, len(known_label2id or {}))
        id2label = {i: str(i) for i in range(size)}
    label2id = {name: i for i, name in id2label.items()}
    train = None
    if train_rows is not None:
        train = _encode_rows(
            train_rows, text_column, text_pair_column, label_column, label2id, "--train-file", train_file
        )
    evaluation = _encode_rows(
        eval_rows, text_column, text_pair_column, label_column, label2id, "--eval-file", eval_file
    )
    source = {
        "train_file": train_file,
        "eval_file": eval_file,
        "text_column": text_column,
        "text_pair_column": text_pair_column,
        "label_column": label_column,
    }
    return TextClassificationData(train, evaluation, text_column, text_pair_column, id2label, source)


def load_glue(task: str, *, with_train: bool = True) -> TextClassificationData:
    """A GLUE classification task from the ``datasets`` hub (needs network access the first time).

    Args:
        task: one of :data:`GLUE_TASKS` (STS-B is regression and not supported).
        with_train: also load the training split.
    """
    if task not in GLUE_TASKS:
        raise ValueError(f"--glue-task must be one of {sorted(GLUE_TASKS)}, got {task!r}")
    import datasets

    spec = GLUE_TASKS[task]
    text, pair = spec["text"]
    splits = {"eval": spec["eval_split"]}
    if with_train:
        splits["train"] = "train"
    loaded = {}
    for key, split in splits.items():
        try:
            ds = datasets.load_dataset(GLUE_HUB_ID, task, split=split)
        except Exception as e:
            raise RuntimeError(f"--glue-task {task}: could not load split {split!r} from the hub ({e})") from e
        loaded[key] = ds
    names = loaded["eval"].features["label"].names
    id2label = dict(enumerate(names))
    columns = [text] + ([pair] if pair else [])

    def rows(ds) -> list[dict]:
        out = []
        for item in ds:
            row = {c: item[c] for c in columns}
            row[LABEL_ID] = int(item["label"])
            out.append(row)
        return out

    return TextClassificationData(
        rows(loaded["train"]) if with_train else None,
        rows(loaded["eval"]),
        text,
        pair,
        id2label,
        {"glue_task": task, "hub_id": GLUE_HUB_ID, "eval_split": spec["eval_split"]},
    )


def tokenize(rows: list[dict], tokenizer, data: TextClassificationData, max_length: int):
    """A ``datasets.Dataset`` of ``input_ids``, ``attention_mask`` (and ``token_type_ids``) and ``labels``.

    Sequences are truncated to ``max_length`` and left unpadded: the collator pads each batch to its
    longest row. That is exact for PoWER-BERT: a layer keeps ``min(l_j, n)`` of a batch's n vectors and
    padding ranks last, so the real tokens a layer keeps, and the logits, do not depend on the padding.
    """
    import datasets

    columns = {data.text_column: [r[data.text_column] for r in rows], LABEL_ID: [r[LABEL_ID] for r in rows]}
    if data.text_pair_column is not None:
        columns[data.text_pair_column] = [r[data.text_pair_column] for r in rows]
    ds = datasets.Dataset.from_dict(columns)

    def encode(batch):
        pair = batch[data.text_pair_column] if data.text_pair_column is not None else None
        return tokenizer(batch[data.text_column], pair, truncation=True, max_length=max_length)

    text_columns = [c for c in (data.text_column, data.text_pair_column) if c is not None]
    return ds.map(encode, batched=True, remove_columns=text_columns)
