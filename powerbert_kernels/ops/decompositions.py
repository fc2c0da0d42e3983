"""The PoWER-BERT ops written with standard PyTorch operators only, for export.

A runtime that knows nothing of the ``powerbert`` namespace (ONNX Runtime, TensorRT, OpenVINO) can run a
model whose custom ops were replaced by these: attention as matmul / softmax / sum, selection as top-k /
gather. Applied to an exported program with ``ExportedProgram.run_decompositions(DECOMPOSITIONS)``.

They compute what the references compute, in one piece instead of blocks (an exported graph has no
Python loop), and without any branch on a size, so one graph serves every batch size and length. The
selection rule is the one of :mod:`.select_gather`, as a single descending sort key: the CLS vector
above every real token, real tokens by significance, padding below every real token by position. Ties
go to the lower position, as ONNX's TopK breaks them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .attention import _plain_attention
from .select_gather import cls_positions


def attention_with_significance_decomposed(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    scale: float,
    exclude_self: bool,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``powerbert::attention_with_significance`` in standard operators (``backend`` is ignored).

    Args:
        q, k, v: (B, N, H, d); key_padding_mask: (B, N) bool, True = real token; scale: score scale.

    Returns:
        out: (B, N, H*d) in the dtype of ``q``; significance: (B, N) float32.
    """
    B, N, H, d = q.shape
    qt, kt, vt = (t.float().transpose(1, 2) for t in (q, k, v))
    # The references' padding convention: a finite large negative bias, so a padded key gets exactly 0.
    bias = torch.where(key_padding_mask, 0.0, torch.finfo(torch.float32).min)[:, None, None, :]
    probs = torch.softmax(torch.matmul(qt, kt.transpose(2, 3)) * scale + bias, dim=-1)
    out = torch.matmul(probs, vt).transpose(1, 2).reshape(B, N, H * d).to(q.dtype)
    votes = key_padding_mask.float()
    per_query = probs.sum(dim=1)  # (B, N, N): summed over heads
    significance = torch.matmul(votes[:, None, :], per_query).squeeze(1)
    if exclude_self:
        positions = torch.arange(N, device=q.device)
        diagonal = (per_query * (positions[:, None] == positions[None, :])).sum(dim=-1)
        significance = significance - diagonal * votes
    return out, significance


def attention_decomposed(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    scale: float,
    implementation: str,
) -> torch.Tensor:
    """``powerbert::attention`` (no significance): the op's own body, already standard operators.

    Args:
        q, k, v: (B, N, H, d); key_padding_mask: (B, N) bool or None.

    Returns:
        out: (B, N, H*d) in the dtype of ``q``.
    """
    return _plain_attention(q, k, v, key_padding_mask, scale, implementation)


def select_gather_decomposed(
    hidden: torch.Tensor,
    significance: torch.Tensor,
    mask: torch.Tensor,
    keep: int,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``powerbert::select_gather`` as two top-k and three gathers (``backend`` is ignored).

    Args:
        hidden: (B, N, D); significance: (B, N) float; mask: (B, N) bool; keep: 1 <= keep <= N (may be
            symbolic).

    Returns:
        hidden_kept: (B, keep, D); mask_kept: (B, keep) bool; indices: (B, keep) int64.
    """
    B, N, D = hidden.shape
    positions = torch.arange(N, device=hidden.device)
    is_cls = positions[None, :] == cls_positions(mask)[:, None]
    # Real significance is >= 0 (a sum of probabilities; with exclude_self, rounding can leave a few ulps
    # below 0), so -1 - position puts padding below every real token, earlier padding first.
    key = torch.where(mask, significance.float(), -1.0 - positions.float())
    key = torch.where(is_cls, torch.finfo(torch.float32).max, key)
    chosen = torch.topk(key, keep, dim=1).indices
    # Output order: kept real tokens by position, then kept padding by position (N + position).
    order_key = chosen + N * (~mask.gather(1, chosen)).long()
    indices = chosen.gather(1, torch.topk(order_key, keep, dim=1, largest=False).indices)
    hidden_kept = hidden.gather(1, indices[:, :, None].expand(B, keep, D))
    return hidden_kept, mask.gather(1, indices), indices


DECOMPOSITIONS: dict[torch._ops.OpOverload, Callable[..., object]] = {
    torch.ops.powerbert.attention_with_significance.default: attention_with_significance_decomposed,
    torch.ops.powerbert.attention.default: attention_decomposed,
    torch.ops.powerbert.select_gather.default: select_gather_decomposed,
}
"""Each custom op of the package mapped to its standard-operator version (a decomposition table)."""
