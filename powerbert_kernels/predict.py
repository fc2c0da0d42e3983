"""``powerbert predict``: run a saved PoWER-BERT classifier (or regression model) over a file of texts.

Reads CSV, TSV, JSON or JSON lines; writes JSON lines in input order, one object per input row::

    {"id": "a17", "label": "positive", "probabilities": {"negative": 0.0132, "positive": 0.9868}}

(``id`` only when the input has the ``--id-column``). A regression model (one real-valued output,
``problem_type="regression"``, as for STS-B) writes its score instead of a label and probabilities::

    {"id": "a17", "score": 3.8127}
 Texts are tokenized once, sorted by length and
batched with their neighbours, so that each batch pads little; texts longer than ``--max-length`` tokens
are truncated and counted. The closing line gives the throughput and the FLOP ratio on this data;
``--compare`` also runs the same weights unpatched, batch by batch in alternating order, and reports how
often the predicted labels agree (for a regression model: the Pearson correlation of the two models' scores
and their largest difference) and the measured speed-up.

The output appears only when complete: it is written to a temporary file beside it and renamed.

Under ``torchrun`` or ``accelerate launch`` (several processes, one per GPU, or CPU processes on the gloo
backend) the batches are dealt out to the processes, the results gathered, and the first process writes
the one output file, with the same rows as a single-process run: the batches are the same whatever the
number of processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .cli_args import device_name, positive_int, retention_list

if TYPE_CHECKING:
    import torch
    from torch import nn

HELP = "label (or score) a file of texts with a saved PoWER-BERT model (JSON lines out, in input order)"


@dataclass
class Texts:
    """The texts of an input file, checked: ``first``/``second`` (sentence pairs), the ids when the file
    has the id column, and the line of every row for messages."""

    first: list[str]
    second: list[str] | None
    ids: list[object] | None
    lines: list[int]


@dataclass
class Batches:
    """Token ids of every text (truncated), how many were truncated, and the batches: lists of row
    indices of texts of similar length."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    truncated: int
    batches: list[list[int]]


@dataclass
class Shard:
    """What one process computed: rows, their outputs (class probabilities, or the score of a regression
    model), the unpatched model's (its class, or its score) with ``--compare``, and its counters."""

    rows: list[int] = field(default_factory=list)
    outputs: list[list[float]] | list[float] = field(default_factory=list)
    stock_outputs: list[int] | list[float] = field(default_factory=list)
    power_seconds: float = 0.0
    stock_seconds: float = 0.0
    stock_flops: int = 0
    power_flops: int = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a model folder saved by `powerbert train` (or any sequence classifier whose config holds a "
        "retention configuration, or with --retention), or a hub id",
    )
    parser.add_argument("--input", required=True, help="the texts: .csv, .tsv (header row), .json or .jsonl")
    parser.add_argument("--output", required=True, help="where the predictions go, as JSON lines")
    parser.add_argument("--text-column", default="sentence", help="the text column (or JSON key)")
    parser.add_argument("--text-pair-column", help="second text column, for sentence-pair tasks (default: none)")
    parser.add_argument("--id-column", default="id", help="copied to the output as `id` when the input has this column")
    parser.add_argument(
        "--retention",
        type=retention_list,
        help="comma-separated counts or fractions to use instead of the configuration stored in the model "
        "(default: the stored one)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=64, help="texts per forward")
    parser.add_argument(
        "--max-length",
        type=positive_int,
        help="tokens per text, special tokens included; longer texts are truncated and counted "
        "(default: the model's maximum positions)",
    )
    parser.add_argument(
        "--device",
        type=device_name,
        help="cpu, cuda or cuda:N (default: the process's GPU when there is one, else cpu)",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also run the same weights unpatched: agreement of the predicted labels and measured speed-up",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def read_texts(path: str, text_column: str, pair_column: str | None, id_column: str | None) -> Texts:
    """The texts of ``path`` (see :mod:`powerbert_kernels.tables` for the formats).

    Raises:
        ValueError: a missing column or an empty text, naming the file, the line and the option.
    """
    from .tables import read_table_lines

    table = read_table_lines(path, "--input")
    wanted = [(text_column, "--text-column")] + ([(pair_column, "--text-pair-column")] if pair_column else [])
    for column, option in wanted:
        for row, line in zip(table.rows, table.lines, strict=True):
            value = row.get(column)
            if column not in row:
                raise ValueError(
                    f"--input: {path} line {line} has no column {column!r} (named by {option}); "
                    f"its columns: {', '.join(map(str, row))}"
                )
            if value is None or (isinstance(value, str) and not value.strip()):
                raise ValueError(f"--input: {path} line {line} has an empty {column!r} ({option})")
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(
                    f"--input: {path} line {line}: {column!r} is a {type(value).__name__}; expected text ({option})"
                )
    first = [str(row[text_column]) for row in table.rows]
    second = [str(row[pair_column]) for row in table.rows] if pair_column else None
    ids = None
    if id_column and any(id_column in row for row in table.rows):
        missing = [line for row, line in zip(table.rows, table.lines, strict=True) if id_column not in row]
        if missing:
            raise ValueError(
                f"--input: {path} line {missing[0]} has no {id_column!r} (--id-column) while other rows have one"
            )
        ids = [row[id_column] for row in table.rows]
    return Texts(first, second, ids, table.lines)


def make_batches(tokenizer, texts: Texts, max_length: int, batch_size: int) -> Batches:
    """Tokenize every text once (truncated to ``max_length``) and group rows of similar length.

    The batches depend only on the texts and ``batch_size``: rows sorted by token count (ties in input
    order), cut into consecutive groups. Sorting keeps each batch's padding small.
    """
    from transformers.utils import logging as hf_logging

    # Untruncated lengths only to count the truncated texts; silence the tokenizer's "too long" warning.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        full = tokenizer(texts.first, texts.second, truncation=False)["input_ids"]
    finally:
        hf_logging.set_verbosity(verbosity)
    encoded = tokenizer(texts.first, texts.second, truncation=True, max_length=max_length)
    truncated = sum(len(ids) > max_length for ids in full)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return Batches(encoded["input_ids"], encoded.get("token_type_ids"), truncated, batches)


def _pad(tokenizer, data: Batches, rows: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    features = []
    for i in rows:
        item = {"input_ids": data.input_ids[i]}
        if data.token_type_ids is not None:
            item["token_type_ids"] = data.token_type_ids[i]
        features.append(item)
    batch = tokenizer.pad(features, padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_logits(model: nn.Module, inputs: dict[str, torch.Tensor], device: torch.device) -> tuple:
    _sync(device)
    start = time.perf_counter()
    logits = model(**inputs).logits
    _sync(device)
    return logits, time.perf_counter() - start


def predict_shard(
    power: nn.Module,
    stock: nn.Module | None,
    tokenizer,
    data: Batches,
    batch_ids: list[int],
    retention,
    device: torch.device,
    progress,
    regression: bool = False,
) -> Shard:
    """Run the batches ``batch_ids`` of ``data``; with ``stock``, the unpatched model too (the two in
    alternating order from batch to batch, so that drift and background load fall on both alike).
    ``regression``: keep each row's score (the one output) instead of class probabilities."""
    import torch

    from .models import model_flops

    shard = Shard()
    with torch.inference_mode():
        if stock is not None and batch_ids:
            # One untimed forward of each first: one-time costs (allocations, kernel selection, lazy
            # initialisation) would otherwise land on whichever model runs first.
            inputs = _pad(tokenizer, data, data.batches[batch_ids[0]], device)
            power(**inputs)
            stock(**inputs)
        for n, b in enumerate(batch_ids):
            rows = data.batches[b]
            inputs = _pad(tokenizer, data, rows, device)
            batch, length = inputs["input_ids"].shape
            stock_logits = None
            if stock is not None and n % 2 == 1:
                stock_logits, seconds = _timed_logits(stock, inputs, device)
                shard.stock_seconds += seconds
            logits, seconds = _timed_logits(power, inputs, device)
            shard.power_seconds += seconds
            if stock is not None and n % 2 == 0:
                stock_logits, seconds = _timed_logits(stock, inputs, device)
                shard.stock_seconds += seconds
            shard.rows.extend(rows)
            if regression:
                shard.outputs.extend(logits[:, 0].float().cpu().tolist())
            else:
                shard.outputs.extend(torch.softmax(logits.float(), dim=-1).cpu().tolist())
            if stock_logits is not None:
                if regression:
                    shard.stock_outputs.extend(stock_logits[:, 0].float().cpu().tolist())
                else:
                    shard.stock_outputs.extend(stock_logits.argmax(dim=-1).cpu().tolist())
            shard.stock_flops += model_flops(power, batch, length)
            shard.power_flops += model_flops(power, batch, length, retention)
            progress.update(len(rows))
    return shard


def _distributed() -> tuple[int, int]:
    """(rank, world size), joining the process group that torchrun/accelerate launch described."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _gather(shard: Shard, world: int) -> list[Shard]:
    if world == 1:
        return [shard]
    import torch.distributed as dist

    shards: list[Shard | None] = [None] * world
    dist.all_gather_object(shards, shard)
    return [s for s in shards if s is not None]


def _labels(config) -> list[str]:
    return [str(config.id2label.get(i, config.id2label.get(str(i), i))) for i in range(config.num_labels)]


def write_predictions(
    path: str, texts: Texts, labels: list[str] | None, outputs: list[list[float]] | list[float]
) -> None:
    """One JSON object per row, in input order, written atomically: to a temporary file, then renamed.

    ``outputs``: per row the class probabilities (named by ``labels``), or with ``labels=None`` the score
    of a regression model.
    """
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            for i, output in enumerate(outputs):
                record = {"id": texts.ids[i]} if texts.ids is not None else {}
                if labels is None:
                    record["score"] = round(output, 6)
                else:
                    best = max(range(len(output)), key=output.__getitem__)
                    record["label"] = labels[best]
                    record["probabilities"] = {name: round(p, 6) for name, p in zip(labels, output, strict=True)}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _check_output(path: str, input_path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--output: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"--output: {path} is a folder; give a file name")
    if os.path.exists(input_path) and os.path.exists(path) and os.path.samefile(path, input_path):
        raise ValueError(f"--output: {path} is the input file; give another name")


def _load(args: argparse.Namespace, device: torch.device):
    """The tokenizer, the patched model, the unpatched one (with ``--compare``) and the retention."""
    import copy

    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from .cli_args import check_max_positions, load_error
    from .models import apply_power_bert
    from .models.loading import is_regression
    from .models.retention import CONFIG_KEY, validate_retention

    try:
        config = AutoConfig.from_pretrained(args.model)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except OSError as e:
        raise load_error("--model", args.model, e) from e
    if args.max_length is None:
        args.max_length = min(config.max_position_embeddings, tokenizer.model_max_length)
    if args.max_length < 2:
        raise ValueError(f"--max-length must be at least 2 (the CLS token and one more), got {args.max_length}")
    check_max_positions(args.max_length, config.max_position_embeddings, "--max-length")
    retention = args.retention if args.retention is not None else getattr(config, CONFIG_KEY, None)
    if retention is None:
        raise ValueError(f"--model: {args.model} stores no PoWER-BERT configuration ({CONFIG_KEY}); pass --retention")
    retention = validate_retention(list(retention), config.num_hidden_layers, config.max_position_embeddings)
    if not is_regression(config) and (config.num_labels < 2 or config.problem_type == "multi_label_classification"):
        raise ValueError(
            f"--model: {args.model} is neither a single-label classifier nor a regression model "
            f"(num_labels={config.num_labels}, problem_type={config.problem_type!r})"
        )
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    stock = copy.deepcopy(model).to(device) if args.compare else None
    power = apply_power_bert(model, retention).to(device)
    return tokenizer, power, stock, retention, config


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    _check_output(args.output, args.input)
    rank, world = _distributed()
    try:
        return _run(args, rank, world)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _run(args: argparse.Namespace, rank: int, world: int) -> int:
    import torch

    from .cli_args import resolve_device
    from .models.loading import is_regression

    if args.device is None and world > 1 and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = resolve_device(args.device)
    texts = read_texts(args.input, args.text_column, args.text_pair_column, args.id_column)
    if args.no_progress or rank != 0:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    tokenizer, power, stock, retention, config = _load(args, device)
    regression = is_regression(config)
    data = make_batches(tokenizer, texts, args.max_length, args.batch_size)

    from tqdm.auto import tqdm

    show = not args.no_progress and rank == 0
    mine = list(range(rank, len(data.batches), world))
    with tqdm(total=len(texts.first), disable=not show, unit="text", file=sys.stderr, desc="predict") as bar:
        start = time.perf_counter()
        shard = predict_shard(power, stock, tokenizer, data, mine, retention, device, bar, regression)
        if world > 1:
            bar.update(len(texts.first) - bar.n)  # the other processes' rows
        shards = _gather(shard, world)
        seconds = time.perf_counter() - start
    if rank != 0:
        return 0

    outputs: list = [None] * len(texts.first)
    stock_outputs: list = [None] * len(texts.first)
    for s in shards:
        for i, output in zip(s.rows, s.outputs, strict=True):
            outputs[i] = output
        if stock is not None:
            for i, output in zip(s.rows, s.stock_outputs, strict=True):
                stock_outputs[i] = output
    write_predictions(args.output, texts, None if regression else _labels(config), outputs)

    n = len(texts.first)
    stock_seconds = max(s.stock_seconds for s in shards)
    throughput = n / max(seconds - stock_seconds, 1e-9)
    flop_ratio = sum(s.stock_flops for s in shards) / sum(s.power_flops for s in shards)
    processes = f" x {world} processes" if world > 1 else ""
    print(
        f"{n} texts -> {args.output}: {throughput:.1f} texts/s on {device.type}{processes}, "
        f"FLOP ratio {flop_ratio:.2f}x on this data (batch {args.batch_size}, sorted by length); "
        f"{data.truncated} of {n} truncated to --max-length {args.max_length}"
    )
    if stock is not None:
        if regression:
            from .training.metrics import pearson

            largest = max(abs(a - b) for a, b in zip(outputs, stock_outputs, strict=True))
            agreement = (
                f"scores of the same weights unpatched correlate at Pearson {pearson(outputs, stock_outputs):.2f} "
                f"(largest difference {largest:.4g})"
            )
        else:
            agree = sum(
                int(max(range(len(p)), key=p.__getitem__) == s) for p, s in zip(outputs, stock_outputs, strict=True)
            )
            agreement = f"same weights unpatched agree on {agree} of {n} labels ({100 * agree / n:.2f}%)"
        power_total = sum(s.power_seconds for s in shards)
        stock_total = sum(s.stock_seconds for s in shards)
        print(
            f"--compare: {agreement}; "
            f"measured speed-up {stock_total / power_total:.2f}x (forward time {stock_total:.2f} s unpatched, "
            f"{power_total:.2f} s PoWER-BERT, batches in alternating order)"
        )
    return 0
