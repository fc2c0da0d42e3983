"""Soft extract: the differentiable stand-in for the extract layer used by the configuration search.

PoWER-BERT learns how many word-vectors every layer keeps (phase 2 of docs/training.md). Each encoder
layer j gets a :class:`SoftExtract` with a retention parameter vector ``r_j`` of length N (the largest
padded length of the task), initialised to 1. The layer ranks the vectors it received with the same rule
as the hard extract (:func:`powerbert_kernels.ops.selection_order`: CLS first, then real tokens by
significance, padding last) and multiplies the k-th ranked vector by ``r_j[k]``. Nothing is removed, so
the soft model computes exactly what the stock model computes while every ``r`` is 1.

The search minimises ``task loss + lambda * sum_j j * sum_k r_j[k]`` (:func:`retention_penalty`) with
``r`` clipped to [0, 1] after every optimiser step (:func:`clip_retention_`); the learned configuration
is then ``l_j = max(1, floor(mass_j))`` with ``mass_j = sum_k r_j[k]``, made non-increasing
(:func:`derive_retention`).

Why the penalty sums the whole vector, not only the ranks a batch has: ranks at or beyond a batch's
padded length n would rank after every vector the batch has, i.e. they are padding. A padded vector
never reaches a real token (it is a masked key in every later attention), so its ``r`` receives no task
gradient whether it exists in the batch or not. Summing the whole vector therefore makes the search
exactly what it would be if every batch were padded to N: the learned configuration does not depend on
how the batches were padded (dynamic padding is as good as fixed), and ranks that never hold a real token
decay to 0 instead of keeping a mass of 1 each that would inflate ``l_j``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .. import ops
from .extract import Extract
from .retention import LayerKeep, validate_retention


class SoftExtract(Extract):
    """Scales the k-th most significant vector of a layer by a learned ``r[k]`` in [0, 1].

    Args:
        max_length: N, the largest padded length the layer will receive (the tokenizer's
            ``max_length`` of the task); the length of ``r``.

    Attributes:
        r: (N,) float32 parameter, initialised to 1. ``r[k]`` scales the vector of rank k (0-based; rank 0
            is the CLS vector).
    """

    def __init__(self, max_length: int) -> None:
        super().__init__()
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int (the largest padded length), got {max_length!r}")
        self.r = nn.Parameter(torch.ones(max_length, dtype=torch.float32))

    def extra_repr(self) -> str:
        return f"max_length={self.r.numel()}"

    def needs_significance(self, received: int, padded_length: int, plan: LayerKeep | None = None) -> bool:
        # Every vector is ranked, whatever r holds: the ranking decides which r scales it.
        return True

    def mass(self) -> torch.Tensor:
        """() float32: ``sum_k r[k]``, the soft count of vectors this layer keeps."""
        return self.r.sum()

    def forward(
        self,
        hidden: torch.Tensor,
        significance: torch.Tensor | None,
        mask: torch.Tensor,
        padded_length: int,
        plan: LayerKeep | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        """Scale every vector by the ``r`` of its significance rank.

        Args:
            hidden: (B, n, D) the attention block's output.
            significance: (B, n) float32 from the layer's attention (carries no gradient).
            mask: (B, n) bool, True = real token.
            padded_length: N of the batch (n == N: the search never removes anything).
            plan: unused (the search keeps every vector).

        Returns:
            ``(hidden * r[rank], mask, None)``: hidden (B, n, D) in its own dtype, the mask unchanged,
            and ``None`` as nothing is removed. Gradients flow to ``hidden`` and to ``r``.
        """
        B, n, _ = hidden.shape
        if n > self.r.numel():
            raise ValueError(
                f"hidden has {n} vectors but this SoftExtract was built for at most max_length="
                f"{self.r.numel()}; build it with the largest padded length of the data"
            )
        if significance is None:
            raise ValueError("significance: SoftExtract ranks vectors by significance and needs it, got None")
        order = ops.selection_order(significance, mask)  # (B, n): position of the k-th ranked vector
        ranks = torch.arange(n, device=order.device).expand(B, n)
        rank_of = torch.empty_like(order).scatter_(1, order, ranks)  # (B, n): rank of each position
        scale = self.r[rank_of]  # (B, n), differentiable in r
        return hidden * scale.unsqueeze(-1).to(hidden.dtype), mask, None


def soft_extracts(model: nn.Module) -> list[SoftExtract]:
    """The :class:`SoftExtract` modules of a model patched with them, in layer order (empty if none)."""
    return [m for m in model.modules() if isinstance(m, SoftExtract)]


def retention_penalty(extracts: Sequence[SoftExtract]) -> torch.Tensor:
    """() float32: ``sum_j j * sum_k r_j[k]`` over layers j = 1..L (1-based, as the original).

    Deeper layers pay more per kept vector, because a vector dropped early saves every later layer's
    work too; the search therefore prefers a configuration that shrinks with depth. Multiply by lambda.
    """
    if not extracts:
        raise ValueError("extracts: need at least one SoftExtract (is the model patched for the search?)")
    return sum((j + 1) * e.mass() for j, e in enumerate(extracts))


@torch.no_grad()
def clip_retention_(extracts: Iterable[SoftExtract]) -> None:
    """Project every ``r`` back onto [0, 1] in place (after each optimiser step)."""
    for e in extracts:
        e.r.clamp_(0.0, 1.0)


def retention_masses(extracts: Sequence[SoftExtract]) -> list[float]:
    """``sum_k r_j[k]`` of every layer, as Python floats."""
    return [float(e.mass().detach()) for e in extracts]


def derive_retention(masses: Sequence[float], max_length: int, max_positions: int | None = None) -> list[int]:
    """The hard configuration a search learned: ``l_j = max(1, floor(mass_j))``, non-increasing.

    Args:
        masses: ``sum_k r_j[k]`` per layer (:func:`retention_masses`), each in [0, max_length].
        max_length: N, the length of ``r``; no layer keeps more.
        max_positions: the model's ``max_position_embeddings`` (checked by ``validate_retention``);
            defaults to ``max_length``.

    Returns:
        One count per layer with ``max_length >= l_1 >= ... >= l_L >= 1``.
    """
    if not masses:
        raise ValueError("masses: need one entry per encoder layer, got none")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    retention: list[int] = []
    for j, mass in enumerate(masses):
        if not math.isfinite(mass) or mass < 0:
            raise ValueError(f"masses[{j}] = {mass}: a mass is a sum of r values in [0, 1], so finite and >= 0")
        # The small slack absorbs float32 summation error (64 ones may sum to 63.99999).
        keep = max(1, min(max_length, math.floor(mass + 1e-4)))
        if retention:
            keep = min(keep, retention[-1])
        retention.append(keep)
    return validate_retention(retention, len(retention), max_positions or max_length)
