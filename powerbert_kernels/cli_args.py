"""Argument types and checks shared by the ``powerbert`` subcommands.

Light on purpose: the command modules import it at import time, and ``powerbert CMD --help`` must not
load torch or transformers. Every check raises an error that names the option and what was expected;
the ``argparse`` types raise ``argparse.ArgumentTypeError`` (reported by argparse with the option's
name), the run-time checks raise ``ValueError`` (reported by :func:`powerbert_kernels.cli.main`).
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option whose help does not state its default already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        default = action.default
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        return f"{text} (default: {default})" if text else f"(default: {default})"


def positive_int(text: str) -> int:
    """``argparse`` type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """``argparse`` type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {value}")
    return value


def retention_list(text: str) -> list[int] | list[float]:
    """``argparse`` type: comma-separated counts or fractions, checked for their form (the model checks
    the rest: one per layer, non-increasing, in range)."""
    from .models.retention import parse_retention

    try:
        return parse_retention(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def device_name(text: str) -> str:
    """``argparse`` type: ``cpu``, ``cuda`` or ``cuda:N`` (whether it exists is checked by
    :func:`resolve_device` when the command runs)."""
    if not _DEVICE.match(text.strip().lower()):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text.strip().lower()


def resolve_device(name: str | None, option: str = "--device") -> torch.device:
    """The device to run on: ``name``, or the GPU when there is one and ``name`` is None.

    Raises:
        ValueError: a CUDA device was asked for that this machine does not have.
    """
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {name}: no CUDA device is available here (PyTorch {torch.__version__})")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{option} {name}: this machine has {count} CUDA device(s), numbered from 0")
    return device


def check_max_positions(length: int, max_positions: int, option: str) -> None:
    """``length`` tokens must fit the model's position embeddings."""
    if length > max_positions:
        raise ValueError(f"{option} {length} exceeds the model's maximum positions ({max_positions})")


def load_error(option: str, name: str, error: Exception) -> ValueError:
    """A clean error for a model or tokenizer that cannot be loaded from ``name``."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ValueError(f"{option}: cannot load a model from {name!r}: a local folder or a hub id is expected ({reason})")
