"""Retention configurations: how many word-vectors each encoder layer keeps.

A configuration has one entry per encoder layer, non-increasing, either

- ints ``l_j`` with ``1 <= l_j <= max_position_embeddings``: layer j keeps ``min(l_j, n)`` of the ``n``
  vectors it receives (a count above the padded length of a batch keeps everything, so dynamically
  padded batches work), or
- floats in (0, 1]: fractions of the padded length ``N`` of the batch, ``l_j = max(1, ceil(f_j * N))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    if isinstance(retention, (str, bytes)) or not isinstance(retention, Sequence):
        raise TypeError(f"retention must be a sequence of {num_layers} ints or floats, got {type(retention).__name__}")
    values = list(retention)
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


def layer_keep(entry: int | float, received: int, padded_length: int) -> int:
    """How many of ``received`` vectors a layer with retention ``entry`` keeps for padded length N.

    ``received`` and ``padded_length`` may be symbolic sizes (``torch.SymInt`` under ``torch.compile``
    or ``torch.export``): the count is then the symbolic ``min(entry, received)`` (for a fraction, of
    ``ceil(entry * N)``), which adds no guard on the sizes.
    """
    if isinstance(entry, float):
        entry = max(1, math.ceil(entry * padded_length - 1e-9))
    return torch.sym_min(int(entry), received)


def keep_counts(retention: Retention, padded_length: int) -> list[int]:
    """The vectors each layer actually keeps for a batch padded to ``padded_length``."""
    counts, received = [], padded_length
    for entry in retention:
        received = layer_keep(entry, received, padded_length)
        counts.append(received)
    return counts
