"""Text-classification and regression data for the three phases: local CSV/TSV/JSON files or GLUE.

Everything here is checked before any training starts, and every error names the argument (or file)
and what was expected: a missing column, an empty file, a label in the eval file that the training file
does not have, a label the fine-tuned model does not know.

Labels may be strings or ints. Int-like labels (``0``, ``"1"``) are mapped in numeric order, anything
else in sorted order; a fine-tuned model that already has a label mapping (``config.label2id`` with
real names) keeps its own. The mapping is stored in the model's ``config.id2label``/``label2id``.

Real-valued labels (``3.8``, ``"0.25"``, ``"5.000"``: a number written with a decimal point or an
exponent) select a regression task, as STS-B is: one output trained with the mean squared error, scored
with the Pearson and Spearman correlations. Every label of such a file must then be a number (whole
numbers such as ``5`` are fine); a class name among them is an error naming the file and the line. A
fine-tuned model decides for itself: a regression head (``problem_type="regression"``) reads every label
as a number, a classifier reads them as classes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..tables import read_table as read_table  # re-exported for the readers of task files
from ..tables import read_table_lines

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
_REAL_LABEL = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+(?=[eE]))([eE][+-]?\d+)?$")
_DEFAULT_LABEL_NAME = re.compile(r"^LABEL_\d+$")


@dataclass
class TextClassificationData:
    """Raw rows of a classification or regression task, with the label mapping fixed.

    Attributes:
        train: training rows (``None`` when only evaluating), each a dict with the text column(s) and
            the label id (the real-valued label, for regression) under :data:`LABEL_ID`.
        eval: evaluation rows, same layout.
        text_column, text_pair_column: the text column(s) (the second one for sentence pairs).
        id2label: label id -> label name, ids 0..K-1 (empty for regression).
        source: where the data came from, for the report.
        regression: real-valued labels: one output, MSE loss, Pearson/Spearman.
    """

    train: list[dict] | None
    eval: list[dict]
    text_column: str
    text_pair_column: str | None
    id2label: dict[int, str]
    source: dict[str, object] = field(default_factory=dict)
    regression: bool = False

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        """Outputs of the model: the number of classes, 1 for regression."""
        return 1 if self.regression else len(self.id2label)


def _check_columns(
    rows: list[dict], lines: Sequence[int], columns: Sequence[str], arg: str, path: str, flags: Mapping[str, str]
) -> None:
    available = list(rows[0].keys())
    for column in columns:
        for i, (row, line) in enumerate(zip(rows, lines, strict=True)):
            if column not in row:
                where = "" if i == 0 else f" (line {line})"
                raise ValueError(
                    f"{arg}: {path} has no column {column!r}{where} (named by {flags[column]}); "
                    f"available columns: {', '.join(map(str, available))}"
                )
            if row[column] is None:
                raise ValueError(f"{arg}: {path} line {line} has an empty {column!r} ({flags[column]})")


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


def _as_number(value: object) -> float | None:
    """The label as a number, or ``None`` when it is a class name."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _is_real_valued(value: object) -> bool:
    # A number written with a decimal point or an exponent: "3.8", "5.000", "1e-1" in text, 5.0 in JSON
    # (which keeps 5 and 5.0 apart). Whole numbers ("1", 1) stay class ids, and names that Python would
    # parse as floats ("nan", "inf") stay names.
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and _REAL_LABEL.match(value.strip()) is not None


def has_real_valued_labels(labels: Sequence[object]) -> bool:
    """Whether any label is real-valued (see the module docstring): the rows are then a regression task."""
    return any(_is_real_valued(v) for v in labels)


def regression_labels(
    labels: Sequence[object], lines: Sequence[int], arg: str, path: str, reason: str = "the task is a regression"
) -> list[float]:
    """The labels of a regression file as floats.

    Args:
        labels, lines: the label of every row and the line it is on.
        arg, path: the option that named the file, and the file, for messages.
        reason: why these rows are read as a regression, when the file itself does not show it.

    Raises:
        ValueError: a label that is not a finite number, naming ``arg``, the file and the line (and the
            line of a real-valued label, when the file mixes them with class names).
    """
    out = []
    for value, line in zip(labels, lines, strict=True):
        number = _as_number(value)
        if number is None:
            real = next(((v, n) for v, n in zip(labels, lines, strict=True) if _is_real_valued(v)), None)
            why = f"the label column mixes numbers (line {real[1]}: {real[0]!r}) and class names" if real else reason
            raise ValueError(
                f"{arg}: {path} line {line}: label {value!r} is not a number; {why}. A regression task needs a "
                "number in every row, a classification task class names or integer ids only"
            )
        if not math.isfinite(number):
            raise ValueError(f"{arg}: {path} line {line}: label {value!r} is not a finite number")
        out.append(number)
    return out


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


def _regression_rows(
    rows: list[dict], lines: Sequence[int], text: str, pair: str | None, label: str, arg: str, path: str, reason: str
) -> list[dict]:
    values = regression_labels([r[label] for r in rows], lines, arg, path, reason)
    out = []
    for row, value in zip(rows, values, strict=True):
        item = {text: str(row[text]), LABEL_ID: value}
        if pair is not None:
            item[pair] = str(row[pair])
        out.append(item)
    return out


def load_local(
    eval_file: str,
    train_file: str | None = None,
    *,
    text_column: str = "sentence",
    text_pair_column: str | None = None,
    label_column: str = "label",
    known_label2id: Mapping[str, int] | None = None,
    regression: bool | None = None,
) -> TextClassificationData:
    """Read a task from local files (see :func:`read_table` for the formats).

    Args:
        eval_file: evaluation rows.
        train_file: training rows; ``None`` to only evaluate (the labels then come from
            ``known_label2id`` or the eval file).
        text_column, text_pair_column, label_column: column names.
        known_label2id: the model's own label mapping, if it has real names.
        regression: ``None``: real-valued labels in the training file (the eval file without one)
            select regression; ``True``/``False``: the model decides (a regression head, a classifier).
    """
    flags = {text_column: "--text-column", label_column: "--label-column"}
    columns = [text_column, label_column]
    if text_pair_column is not None:
        flags[text_pair_column] = "--text-pair-column"
        columns.insert(1, text_pair_column)
    train_rows = train_lines = None
    if train_file is not None:
        train_table = read_table_lines(train_file, "--train-file")
        train_rows, train_lines = train_table.rows, train_table.lines
        _check_columns(train_rows, train_lines, columns, "--train-file", train_file, flags)
    eval_table = read_table_lines(eval_file, "--eval-file")
    eval_rows, eval_lines = eval_table.rows, eval_table.lines
    _check_columns(eval_rows, eval_lines, columns, "--eval-file", eval_file, flags)
    source = {
        "train_file": train_file,
        "eval_file": eval_file,
        "text_column": text_column,
        "text_pair_column": text_pair_column,
        "label_column": label_column,
    }
    decided_by = train_rows if train_rows is not None else eval_rows
    real = has_real_valued_labels([r[label_column] for r in decided_by])
    if regression is None:
        regression = real
    elif not regression and real:
        arg, path = ("--train-file", train_file) if train_rows is not None else ("--eval-file", eval_file)
        raise ValueError(
            f"{arg}: {path} holds real-valued labels (a regression task) but the model is a classifier "
            f"with {len(known_label2id or {})} labels"
        )
    if regression:
        if not real:
            reason = "the model is a regression model"
        elif train_rows is not None:
            reason = f"the training labels ({train_file}) are real-valued: a regression task"
        else:
            reason = "the task is a regression"
        train = None
        if train_rows is not None:
            train = _regression_rows(
                train_rows, train_lines, text_column, text_pair_column, label_column, "--train-file", train_file, reason
            )
        evaluation = _regression_rows(
            eval_rows, eval_lines, text_column, text_pair_column, label_column, "--eval-file", eval_file, reason
        )
        return TextClassificationData(train, evaluation, text_column, text_pair_column, {}, source, regression=True)
    if has_real_valued_labels([r[label_column] for r in eval_rows]):
        raise ValueError(
            f"--eval-file: {eval_file} holds real-valued labels (a regression task) but the "
            f"{'training labels are' if train_rows is not None else 'model is'} classes"
        )
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
    return TextClassificationData(train, evaluation, text_column, text_pair_column, id2label, source)


def load_glue(task: str, *, with_train: bool = True) -> TextClassificationData:
    """A GLUE classification task from the ``datasets`` hub (needs network access the first time).

    Args:
        task: one of :data:`GLUE_TASKS` (STS-B is not among them: train it from local files, whose
            real-valued labels select regression).
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
    if data.regression:
        # float32 labels: the model's MSE loss compares them with float32 scores.
        ds = ds.cast_column(LABEL_ID, datasets.Value("float32"))

    def encode(batch):
        pair = batch[data.text_pair_column] if data.text_pair_column is not None else None
        return tokenizer(batch[data.text_column], pair, truncation=True, max_length=max_length)

    text_columns = [c for c in (data.text_column, data.text_pair_column) if c is not None]
    return ds.map(encode, batched=True, remove_columns=text_columns)
