"""Retention configurations: how many word-vectors each encoder layer keeps.

A configuration has one entry per encoder layer, non-increasing, either

- ints ``l_j`` with ``1 <= l_j <= max_position_embeddings``: layer j keeps ``min(l_j, n)`` of the ``n``
  vectors it receives (a count above the padded length of a batch keeps everything, so dynamically
  padded batches work), or
- floats in (0, 1]: fractions of each row's own length: a row with ``n`` real tokens keeps
  ``max(1, ceil(f_j * n))`` vectors after layer j, so its result does not depend on what else is in the
  batch. The layer's output is as wide as the largest count in the batch; shorter rows are padded (their
  extra slots masked), as padding is anywhere else.

Entries may be Python or numpy scalars, and the whole configuration a list, a tuple, or a 1-D numpy
array or torch tensor (converted to Python numbers before validation).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

Retention = Sequence[int] | Sequence[float]

CONFIG_KEY = "power_bert_retention"
"""The ``model.config`` attribute that stores the configuration (round-trips through save_pretrained)."""
CONFIG_EXCLUDE_SELF_KEY = "power_bert_exclude_self"


def parse_retention(text: str) -> list[int] | list[float]:
    """Parse ``"76,62,55"`` (counts) or ``"0.6,0.5,0.4"`` (fractions) from the command line."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"retention must be a comma-separated list of numbers, got {text!r}")
    try:
        if all(item.lstrip("+").isdigit() for item in items):
            return [int(item) for item in items]
        return [float(item) for item in items]
    except ValueError:
        raise ValueError(f"retention must be a comma-separated list of numbers, got {text!r}") from None


def validate_retention(retention: Retention, num_layers: int, max_positions: int) -> list[int] | list[float]:
    """Check a configuration and return it as a list of ints or a list of floats.

    Raises ``ValueError``/``TypeError`` naming ``retention`` and what was expected.
    """
    values = _as_python_numbers(retention, num_layers)
    if len(values) != num_layers:
        raise ValueError(f"retention must have one entry per encoder layer ({num_layers}), got {len(values)}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise TypeError(f"retention entries must be ints (counts) or floats (fractions), got {values}")
    ints = all(isinstance(v, int) for v in values)
    if not ints and not all(isinstance(v, float) for v in values):
        raise TypeError(f"retention must be all ints (counts) or all floats (fractions), not a mix: {values}")
    for j, v in enumerate(values):
        if ints and not 1 <= v <= max_positions:
            raise ValueError(
                f"retention[{j}] = {v}: each count must be between 1 and the model's maximum positions "
                f"({max_positions})"
            )
        if not ints and not (0.0 < v <= 1.0 and math.isfinite(v)):
            raise ValueError(f"retention[{j}] = {v}: each fraction must be in (0, 1]")
    for j in range(1, len(values)):
        if values[j] > values[j - 1]:
            raise ValueError(
                f"retention must be non-increasing (a layer cannot keep more than the one before), "
                f"but retention[{j}] = {values[j]} > retention[{j - 1}] = {values[j - 1]}"
            )
    return values


def _as_python_numbers(retention: object, num_layers: int) -> list:
    # Arrays and tensors become lists of Python numbers (tolist keeps ints ints and floats floats), and
    # numpy or 0-d tensor entries become Python scalars, so the stored configuration is plain JSON.
    expected = f"retention must be a sequence of {num_layers} ints or floats"
    if hasattr(retention, "tolist") and hasattr(retention, "ndim"):
        if retention.ndim != 1:
            raise TypeError(f"{expected}, got a {retention.ndim}-D {type(retention).__name__}")
        retention = retention.tolist()
    if isinstance(retention, (str, bytes)) or not isinstance(retention, Sequence):
        raise TypeError(f"{expected}, got {type(retention).__name__}")
    return [_as_python_number(v) for v in retention]


def _as_python_number(value: object) -> object:
    if hasattr(value, "ndim") and hasattr(value, "item") and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def fraction_count(fraction: float, length: int) -> int:
    """``max(1, ceil(fraction * length))``: what a fraction keeps of ``length`` vectors."""
    # The slack keeps float error from adding a vector: 0.3 * 10 is 3.0000000000000004.
    return max(1, math.ceil(fraction * length - 1e-9))


def layer_keep(entry: int | float, received: int, padded_length: int) -> int:
    """How many of ``received`` vectors a layer keeps in a batch whose rows all have length N.

    Args:
        entry: the layer's retention entry (a count, or a fraction of the row's length).
        received: vectors the layer receives.
        padded_length: N, the length of every row (see :func:`layer_plan` for rows of their own lengths).

    ``received`` and ``padded_length`` may be symbolic sizes (``torch.SymInt`` under ``torch.compile``
    or ``torch.export``): the count is then the symbolic ``min(entry, received)`` (for a fraction, of
    ``ceil(entry * N)``), which adds no guard on the sizes.
    """
    if isinstance(entry, float):
        entry = fraction_count(entry, padded_length)
    return torch.sym_min(int(entry), received)


def keep_counts(retention: Retention, padded_length: int) -> list[int]:
    """The vectors each layer keeps of a row of length ``padded_length`` (or a batch of such rows)."""
    counts, received = [], padded_length
    for entry in retention:
        received = layer_keep(entry, received, padded_length)
        counts.append(received)
    return counts


def row_keep_counts(retention: Retention, lengths: Sequence[int]) -> list[list[int]]:
    """Per row, the vectors each layer keeps: ``keep_counts`` of the row's own real length.

    These are the counts of real tokens a patched model keeps of every row, wherever the row sits in a
    batch: for counts, ``min(l_j, n)``; for fractions, ``max(1, ceil(f_j * n))``.
    """
    return [keep_counts(retention, int(n)) for n in lengths]


@dataclass(frozen=True)
class LayerKeep:
    """What one layer keeps of a batch.

    Attributes:
        width: vectors the layer outputs per row (the largest count in the batch).
        row_counts: each row's own count where some row keeps fewer real tokens than its ``width`` best
            would include (its other slots are then masked); ``None`` when every row keeps its
            ``width`` best, which the extract step does without a ranking pass.
    """

    width: int
    row_counts: tuple[int, ...] | None = None


def layer_plan(retention: Retention, padded_length: int, lengths: Sequence[int] | None = None) -> list[LayerKeep]:
    """What every layer keeps of a batch padded to N whose rows have real lengths ``lengths``.

    A count keeps the same number of vectors of every row (a row with fewer real tokens keeps padding,
    which stays masked), so it needs no lengths. A fraction keeps ``max(1, ceil(f_j * n_b))`` of row b,
    capped by what the row received; the layer outputs the largest count, and rows that keep fewer get
    ``row_counts``. Without ``lengths`` every row is taken to be ``padded_length`` long.

    Args:
        retention: a validated configuration.
        padded_length: N.
        lengths: (B,) the number of real tokens of each row, or ``None``.
    """
    plan: list[LayerKeep] = []
    received = padded_length
    # The real tokens each row still has: a row's ``width`` best hold min(width, current) real ones.
    current = None if lengths is None else [int(n) for n in lengths]
    for entry in retention:
        if isinstance(entry, float) and current is not None:
            counts = [min(fraction_count(entry, n), c) for n, c in zip(lengths, current, strict=True)]
            width = min(max(counts, default=layer_keep(entry, received, padded_length)), received)
            short = any(k < min(width, c) for k, c in zip(counts, current, strict=True))
            plan.append(LayerKeep(width, tuple(counts) if short else None))
            current = counts
        else:
            width = layer_keep(entry, received, padded_length)
            plan.append(LayerKeep(width))
            if current is not None:
                current = [min(width, c) for c in current]
        received = width
    return plan
