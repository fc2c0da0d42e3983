"""Sliding-window (local) self-attention over vectors that keep their original positions.

Encoders such as ModernBERT alternate global layers with local ones, where a query attends only to keys
at most ``window`` positions away. After PoWER-BERT removed vectors, neighbours in the tensor are no
longer neighbours in the text: the window is measured in the **original** input positions, which the
caller passes along with the vectors.

These ops exist only as pure PyTorch (fp32 scores and softmax for the significance variant): the Triton
kernels and the compiled extension take a key padding mask, not a per-query window, so no backend
choice applies here. They materialise the (B, H, n, n) scores, as HF's eager attention does; the matrix
products are the same two a full attention computes, so ``FlopCounterMode`` counts them as such, and the
significance column sums are elementwise work it does not count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_mask, check_same_device, check_tensor
from .attention import _check_qkv, _check_scale


def local_attention_mask(positions: torch.Tensor, key_padding_mask: torch.Tensor, window: int) -> torch.Tensor:
    """Which keys each query may attend to: (B, n, n) bool.

    ``allowed[b, i, j]`` is True when key ``j`` is a real token and ``|positions[b, i] - positions[b, j]| <=
    window``. A real query always sees itself; a padded query far from every real token sees nothing, and
    gets what the stock attention gives such a row (SDPA: zeros; the additive dtype-min bias of the eager
    and significance paths: a uniform average, never NaN). No real query reads it.

    Args:
        positions: (B, n) or (1, n) int64, the original input position of every vector.
        key_padding_mask: (B, n) bool, True = real token.
        window: the largest distance, in original positions, between a query and a key it sees.
    """
    distance = (positions[:, :, None] - positions[:, None, :]).abs()
    return (distance <= window) & key_padding_mask[:, None, :]


def _check_local(q, k, v, key_padding_mask, positions, window):
    q = _check_qkv(q, k, v)
    B, n = q.shape[:2]
    check_mask("key_padding_mask", key_padding_mask, B, n, q.device)
    positions = check_tensor("positions", positions, 2, f"(B, n) = ({B}, {n})")
    if positions.shape[1] != n or positions.shape[0] not in (1, B):
        raise ValueError(f"positions must have shape (B, n) = ({B}, {n}) or (1, {n}), got {tuple(positions.shape)}")
    if positions.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"positions must be an integer tensor (original input positions), got {positions.dtype}")
    check_same_device("positions", positions, q.device)
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be a non-negative int (a distance in positions), got {window!r}")
    return q


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    positions: torch.Tensor,
    window: int,
    *,
    scale: float | None = None,
    implementation: str = "sdpa",
) -> torch.Tensor:
    """Local self-attention without significance, for layers that keep every vector.

    Args:
        q, k, v: (B, n, H, d) float16, bfloat16 or float32, last dimension contiguous.
        key_padding_mask: (B, n) bool, True = real token.
        positions: (B, n) or (1, n) int64, original input positions of the vectors.
        window: keys farther than this from the query (in original positions) are masked.
        scale: score scale, default ``1 / sqrt(d)``.
        implementation: ``"sdpa"`` (PyTorch's fused attention with a boolean mask) or ``"eager"``
            (scores, additive dtype-min mask, softmax in fp32 as HF's eager ModernBERT attention).

    Returns:
        out: (B, n, H*d) in the dtype of ``q``.
    """
    q = _check_local(q, k, v, key_padding_mask, positions, window)
    if implementation not in ("sdpa", "eager"):
        raise ValueError(f"implementation must be 'sdpa' or 'eager', got {implementation!r}")
    B, n, H, d = q.shape
    scale = _check_scale(scale, d)
    allowed = local_attention_mask(positions, key_padding_mask, window)[:, None]
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if implementation == "eager":
        scores = torch.matmul(qt, kt.transpose(2, 3)) * scale
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
        scores = scores + bias.masked_fill_(~allowed, torch.finfo(q.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, vt)
    else:
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=allowed, scale=scale)
    return out.transpose(1, 2).reshape(B, n, H * d)


def local_attention_with_significance(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    positions: torch.Tensor,
    window: int,
    *,
    scale: float | None = None,
    exclude_self: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local self-attention plus every vector's significance (fp32 scores and softmax).

    The significance is :func:`~powerbert_kernels.ops.attention_with_significance`'s: the attention a
    vector receives, summed over heads and real query rows, here from the queries whose window holds it.

    Args:
        q, k, v: (B, n, H, d) float16, bfloat16 or float32, last dimension contiguous.
        key_padding_mask: (B, n) bool, True = real token (only real rows vote).
        positions: (B, n) or (1, n) int64, original input positions of the vectors.
        window: keys farther than this from the query (in original positions) are masked.
        scale: score scale, default ``1 / sqrt(d)``.
        exclude_self: leave each vector's attention to itself out of its own significance.

    Returns:
        out: (B, n, H*d) in the dtype of ``q``; significance: (B, n) float32, 0 for padding.
    """
    q = _check_local(q, k, v, key_padding_mask, positions, window)
    B, n, H, d = q.shape
    scale = _check_scale(scale, d)
    allowed = local_attention_mask(positions, key_padding_mask, window)[:, None]
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=q.device)
    bias.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    qt, kt, vt = (t.float().transpose(1, 2) for t in (q, k, v))
    probs = torch.softmax(torch.matmul(qt, kt.transpose(2, 3)) * scale + bias, dim=-1)
    out = torch.matmul(probs, vt).transpose(1, 2).reshape(B, n, H * d).to(q.dtype)
    with torch.no_grad():
        significance = column_sums_elementwise(probs.detach(), key_padding_mask, exclude_self)
    return out, significance


def column_sums_elementwise(probs: torch.Tensor, key_padding_mask: torch.Tensor, exclude_self: bool) -> torch.Tensor:
    """:func:`~powerbert_kernels.ops.attention.column_sums_ref` of a whole (B, H, n, n) probability tensor:
    (B, n) float32, each vector's probability summed over heads and real query rows.

    Written as a masked elementwise sum rather than a matrix product: it is ranking work, not part of the
    model's matrix FLOPs, and a FLOP counter then sees only the attention's own two products.
    """
    votes = key_padding_mask.to(probs.dtype)
    # Heads first: one (B, n, n) temporary instead of a weighted copy of the (B, H, n, n) probabilities.
    per_pair = probs.sum(dim=1)
    sums = (per_pair * votes[:, :, None]).sum(dim=1)
    if exclude_self:
        sums -= torch.diagonal(per_pair, dim1=-2, dim2=-1) * votes
    return sums


__all__ = [
    "column_sums_elementwise",
    "local_attention",
    "local_attention_mask",
    "local_attention_with_significance",
]
