"""Rows of text from CSV, TSV, JSON and JSON-lines files, with the line each row came from.

Shared by ``powerbert predict`` and the training data loaders. Every error names the command-line
argument, the file and the line: an empty file, a header without rows, a row with the wrong number of
fields, bytes that are not UTF-8, a line that is not JSON, a JSON value that is not an object.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass

EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl")


@dataclass
class Table:
    """The rows of a file, each a dict, and ``lines[i]``: the line of ``rows[i]`` (1-based; for a JSON
    array, the line its object starts on)."""

    rows: list[dict]
    lines: list[int]


def _decode(data: bytes, path: str, arg: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(
            f"{arg}: {path} line {line} is not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from None


def _read_delimited(text: str, path: str, arg: str, tsv: bool) -> Table:
    # TSV without quote processing: GLUE's files hold sentences with unbalanced quotes.
    stream = io.StringIO(text, newline="")
    reader = csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(stream)
    numbered: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                numbered.append((reader.line_num, row))
    except csv.Error as e:
        raise ValueError(f"{arg}: {path} line {reader.line_num} is not valid {'TSV' if tsv else 'CSV'} ({e})") from None
    if not numbered:
        raise ValueError(f"{arg}: {path} is empty (expected a header row and at least one data row)")
    (_, header), body = numbered[0], numbered[1:]
    if not body:
        raise ValueError(f"{arg}: {path} has a header ({', '.join(header)}) but no data rows")
    for line, row in body:
        if len(row) != len(header):
            raise ValueError(
                f"{arg}: {path} line {line} has {len(row)} fields but the header has {len(header)} "
                f"({', '.join(header)})"
            )
    return Table([dict(zip(header, row, strict=True)) for _, row in body], [line for line, _ in body])


def _read_json(text: str, path: str, arg: str) -> Table:
    if not text.strip():
        raise ValueError(f"{arg}: {path} is empty (expected JSON objects, one per row)")
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError:
        rows, lines = [], []
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                rows.append(json.loads(raw))
            except json.JSONDecodeError as e:
                raise ValueError(f"{arg}: {path} line {line} is not valid JSON ({e.msg})") from None
            lines.append(line)
    else:
        if isinstance(loaded, list):
            rows = loaded
            # Line numbers of the array's items: where each object opens, found by decoding item by item.
            decoder, lines, pos = json.JSONDecoder(), [], text.index("[") + 1
            for _ in rows:
                while text[pos] in " \t\r\n,":
                    pos += 1
                lines.append(text.count("\n", 0, pos) + 1)
                _, pos = decoder.raw_decode(text, pos)
        else:
            rows, lines = [loaded], [1]
    if not rows:
        raise ValueError(f"{arg}: {path} holds no rows")
    for row, line in zip(rows, lines, strict=True):
        if not isinstance(row, dict):
            raise ValueError(f"{arg}: {path} line {line} holds a {type(row).__name__}; expected a JSON object per row")
    return Table(rows, lines)


def read_table_lines(path: str, arg: str = "file") -> Table:
    """The rows of a CSV, TSV or JSON file and the line of each.

    ``.tsv`` is read tab-separated without quote processing, ``.csv`` with standard CSV quoting (the
    first row of both is the header), ``.json``/``.jsonl`` as either one JSON array of objects or one
    object per line. The text must be UTF-8 (a byte-order mark is ignored).

    Args:
        path: the file.
        arg: the command-line argument that named it, for error messages.

    Raises:
        FileNotFoundError: no such file.
        ValueError: anything else wrong with it, naming ``arg``, the file and the line.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{arg}: no such file: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise ValueError(f"{arg}: {path} has an unknown extension {ext!r}; expected .csv, .tsv, .json or .jsonl")
    with open(path, "rb") as f:
        text = _decode(f.read(), path, arg)
    if ext in (".tsv", ".csv"):
        return _read_delimited(text, path, arg, tsv=ext == ".tsv")
    return _read_json(text, path, arg)


def read_table(path: str, arg: str = "file") -> list[dict]:
    """The rows of a CSV, TSV or JSON file as dicts (see :func:`read_table_lines`)."""
    return read_table_lines(path, arg).rows
