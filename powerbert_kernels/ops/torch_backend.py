"""The ``torch`` backend: the pure-PyTorch references, on every device and float dtype."""

from __future__ import annotations

import torch

from .attention import attention_with_significance_ref
from .dense import dense_ref
from .dispatch import OpBackend
from .select_gather import select_gather_ref

DETAIL = "pure PyTorch, every device"


class TorchAttention(OpBackend):
    """:func:`~powerbert_kernels.ops.attention_with_significance_ref`, blocked fp32 attention."""

    op = "attention_with_significance"
    name = "torch"
    devices = None

    @staticmethod
    def apply(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor,
        scale: float,
        exclude_self: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return attention_with_significance_ref(q, k, v, key_padding_mask, scale, exclude_self)


class TorchSelectGather(OpBackend):
    """:func:`~powerbert_kernels.ops.select_gather_ref`, two stable sorts and a gather."""

    op = "select_gather"
    name = "torch"
    devices = None

    @staticmethod
    def apply(
        hidden: torch.Tensor, significance: torch.Tensor, mask: torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return select_gather_ref(hidden, significance, mask, keep)


class TorchDense(OpBackend):
    """:func:`~powerbert_kernels.ops.dense_ref`, the Hugging Face modules' composition."""

    op = "dense"
    name = "torch"
    devices = None

    @staticmethod
    def apply(*args: object) -> list[torch.Tensor]:
        return dense_ref(*args)


IMPLEMENTATIONS = (TorchAttention, TorchSelectGather, TorchDense)
