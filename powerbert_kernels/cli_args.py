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


def option(
    help: str,
    *,
    flag: str | None = None,
    group: str | None = None,
    check: str | None = None,
    **argparse_kwargs: object,
) -> dict[str, object]:
    """Metadata of a configuration dataclass field that is also a command-line option.

    Args:
        help: the option's help text (its default is appended by :class:`HelpFormatter`).
        flag: the option (default: ``--`` and the field name with dashes).
        group: the heading it is listed under in ``--help``.
        check: what :func:`check_fields` enforces: ``"positive"`` (a number > 0), ``"positive_int"``,
            ``"non_negative"``, ``"fraction"`` (in [0, 1)), or None.
        argparse_kwargs: passed on to ``add_argument`` (``type``, ``choices``, ``nargs``, ``metavar``).
    """
    return {"help": help, "flag": flag, "group": group, "check": check, "argparse": argparse_kwargs}


def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, groups: dict[str, str] | None = None, only: str | None = None
) -> None:
    """Add one option per field of the dataclass ``cls`` that has :func:`option` metadata.

    A field without a default is a required option; a bool field is a switch (``--name`` when it
    defaults to False, ``--no-name`` when it defaults to True); the type is the metadata's ``type``, else
    that of the default. ``groups`` maps a group key to its heading, in the order they should appear;
    ``only`` restricts the options to that group.
    """
    import dataclasses

    headings = {key: parser.add_argument_group(title) for key, title in (groups or {}).items()}
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or (only is not None and f.metadata.get("group") != only):
            continue
        target = headings.get(f.metadata.get("group"), parser)
        kwargs: dict[str, object] = dict(f.metadata["argparse"])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default
        flag = _flag(f)
        if isinstance(default, bool):
            if default:
                flag = "--no-" + f.name.replace("_", "-")
                kwargs["action"] = "store_false"
            else:
                kwargs["action"] = "store_true"
        else:
            kwargs.setdefault("default", list(default) if isinstance(default, tuple) else default)
            if "type" not in kwargs and isinstance(default, (int, float)):
                kwargs["type"] = type(default)
            if required:
                kwargs["required"] = True
        target.add_argument(flag, dest=f.name, help=f.metadata["help"], **kwargs)


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides: object):
    """An instance of ``cls`` from the parsed options of :func:`add_dataclass_arguments`."""
    import dataclasses

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


def check_fields(config: object) -> None:
    """Enforce the ``check`` of every field's :func:`option` metadata; the error names the option.

    Raises:
        ValueError: a value out of range, naming the option and what was expected.
    """
    import dataclasses
    import math

    for f in dataclasses.fields(config):
        check = f.metadata.get("check")
        value = getattr(config, f.name)
        if check is None or value is None:
            continue
        flag = _flag(f)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if check == "positive_int" and (not number or not isinstance(value, int) or value < 1):
            raise ValueError(f"{flag} must be a positive number (an int >= 1), got {value!r}")
        if check == "positive" and (not number or not math.isfinite(value) or not value > 0):
            raise ValueError(f"{flag} must be a positive number, got {value!r}")
        if check == "non_negative" and (not number or not math.isfinite(value) or value < 0):
            raise ValueError(f"{flag} must be >= 0, got {value!r}")
        if check == "fraction" and (not number or not 0 <= value < 1):
            raise ValueError(f"{flag} must be a fraction in [0, 1), got {value!r}")
