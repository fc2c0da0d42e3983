"""Argument checks shared by the ops: each error names the argument and what was expected.

Under ``torch.compile`` and ``torch.export`` sizes are symbolic: formatting one into a string, or
comparing it in Python beyond what the graph needs, adds a guard that specialises the graph on that
size. Messages that show sizes are therefore built only once a check has failed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)


def check_tensor(name: str, t: object, ndim: int, shape_doc: str | Callable[[], str]) -> torch.Tensor:
    """``t`` as a tensor of ``ndim`` dimensions; ``shape_doc`` (or the function making it) names the shape."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {_doc(shape_doc)}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {_doc(shape_doc)}, got {tuple(t.shape)}")
    return t


def _doc(shape_doc: str | Callable[[], str]) -> str:
    return shape_doc if isinstance(shape_doc, str) else shape_doc()


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")


def check_mask(name: str, mask: object, batch: int, length: int, device: torch.device) -> torch.Tensor:
    mask = check_tensor(name, mask, 2, lambda: f"(B, N) = ({batch}, {length})")
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"{name} must have shape (B, N) = ({batch}, {length}), got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a bool tensor (True = real token), got {mask.dtype}; "
            "convert an HF attention mask with mask.bool()"
        )
    check_same_device(name, mask, device)
    return mask


def check_same_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
