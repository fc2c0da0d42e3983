"""Extract layers: what an encoder layer does with its word-vectors between attention and feed-forward."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .retention import LayerKeep, layer_keep


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

    ``forward(hidden, significance, mask, padded_length, plan=None)`` takes the attention block's output
    ``hidden`` (B, n, D), the layer's ``significance`` (B, n) float32 (``None`` when
    :meth:`needs_significance` said no), ``mask`` (B, n) bool, the padded input length N and the
    layer's :class:`~powerbert_kernels.models.retention.LayerKeep` for this batch (``None`` when the
    model was patched with ``extracts`` rather than a retention configuration), and returns
    ``(hidden, mask, indices)`` where ``indices`` (B, n') int64 are the kept positions among the n
    received, or ``None`` when every vector was kept in place. Everything a call needs arrives as an
    argument: one module serves concurrent calls.
    """

    def needs_significance(self, received: int, padded_length: int, plan: LayerKeep | None = None) -> bool:
        raise NotImplementedError


class HardExtract(Extract):
    """PoWER-BERT's extract layer: keep the CLS vector and the most significant others, in order.

    Args:
        retention: the layer's entry of the retention configuration (a count, or a fraction of each
            row's length).
    """

    def __init__(self, retention: int | float) -> None:
        super().__init__()
        self.retention = retention

    def extra_repr(self) -> str:
        return f"retention={self.retention}"

    def keep(self, received: int, padded_length: int) -> int:
        """Vectors kept of ``received`` when every row is ``padded_length`` long."""
        return layer_keep(self.retention, received, padded_length)

    def _plan(self, received: int, padded_length: int, plan: LayerKeep | None) -> LayerKeep:
        return LayerKeep(self.keep(received, padded_length)) if plan is None else plan

    def needs_significance(self, received: int, padded_length: int, plan: LayerKeep | None = None) -> bool:
        if traced():
            return True
        plan = self._plan(received, padded_length, plan)
        return plan.width < received or plan.row_counts is not None

    def forward(
        self,
        hidden: torch.Tensor,
        significance: torch.Tensor | None,
        mask: torch.Tensor,
        padded_length: int,
        plan: LayerKeep | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        received = hidden.shape[1]
        plan = self._plan(received, padded_length, plan)
        if not traced() and plan.width >= received and plan.row_counts is None:
            return hidden, mask, None
        if plan.row_counts is not None:
            mask = _top_per_row(significance, mask, plan.row_counts)
        return ops.select_gather(hidden, significance, mask, plan.width)


def _top_per_row(significance: torch.Tensor, mask: torch.Tensor, counts: tuple[int, ...]) -> torch.Tensor:
    """(B, n) bool: the mask with every real token outside its row's ``counts[b]`` best turned off.

    The selection then treats those tokens as padding: they fill a short row's slots up to the layer's
    width (masked, so no later layer reads them), and the real tokens it keeps are exactly the ones the
    row keeps alone. The rank of a position is its place in the selection order (CLS first, then real
    tokens by significance, ties to the lower position), the order the extract kernels use.
    """
    B, n = mask.shape
    order = ops.selection_order(significance, mask)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(B, n))
    limit = torch.tensor(counts, dtype=rank.dtype, device=rank.device)
    return mask & (rank < limit[:, None])
