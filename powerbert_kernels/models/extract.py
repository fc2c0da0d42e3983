"""Extract layers: what an encoder layer does with its word-vectors between attention and feed-forward."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .retention import layer_keep


def traced() -> bool:
    """Whether the forward is being traced by ``torch.compile`` or ``torch.export``.

    Eager layers that keep everything skip the significance and the selection. A traced layer always
    selects, ``min(l_j, n)`` of its ``n`` vectors (the whole set, in order, when nothing is dropped):
    "does this layer drop anything" is a comparison of sizes, and branching on it would give one graph
    per regime of the padded length. In a batch where no layer drops anything, a traced model then
    differs from the eager one only for left-padded rows, which come out right-padded (CLS first), as
    they do after any dropping layer.
    """
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


class Extract(nn.Module):
    """Base class of the modules a patched encoder layer calls at the extract position.

    ``forward(hidden, significance, mask, padded_length)`` takes the attention block's output
    ``hidden`` (B, n, D), the layer's ``significance`` (B, n) float32 (``None`` when
    :meth:`needs_significance` said no), ``mask`` (B, n) bool and the padded input length N, and
    returns ``(hidden, mask, indices)`` where ``indices`` (B, n') int64 are the kept positions among
    the n received, or ``None`` when every vector was kept in place.
    """

    def needs_significance(self, received: int, padded_length: int) -> bool:
        raise NotImplementedError


class HardExtract(Extract):
    """PoWER-BERT's extract layer: keep the CLS vector and the most significant others, in order.

    Args:
        retention: the layer's entry of the retention configuration (a count, or a fraction of the
            padded length).
    """

    def __init__(self, retention: int | float) -> None:
        super().__init__()
        self.retention = retention

    def extra_repr(self) -> str:
        return f"retention={self.retention}"

    def keep(self, received: int, padded_length: int) -> int:
        return layer_keep(self.retention, received, padded_length)

    def needs_significance(self, received: int, padded_length: int) -> bool:
        return traced() or self.keep(received, padded_length) < received

    def forward(
        self,
        hidden: torch.Tensor,
        significance: torch.Tensor | None,
        mask: torch.Tensor,
        padded_length: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        received = hidden.shape[1]
        keep = self.keep(received, padded_length)
        if not traced() and keep >= received:
            return hidden, mask, None
        return ops.select_gather(hidden, significance, mask, keep)
