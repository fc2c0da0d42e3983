"""PoWER-BERT's extract step: keep the ``keep`` most significant word-vectors of every row.

Selection rule, per row (every backend implements exactly this):

1. the CLS vector is always kept. It is the row's first real token: position 0, unless the row is
   left-padded, in which case it is the first position whose mask is True (position 0 again for a row
   with no real token at all);
2. then real tokens by significance, highest first, ties to the lower position; significance compares as
   ``torch.sort`` compares it: -0.0 equals +0.0, and NaN (every NaN alike) ranks above every number;
3. padding last (by position), so padding is kept only when a row has fewer than ``keep`` real tokens.

:func:`preference_key` states this rule for one position; the reference, the Triton kernel's and the C++
kernels' bit-packed keys are all tested against it.

Output order: the kept real tokens in their original order, then the kept padding in its original
order. For right-padded rows that is simply ascending position order; for a short left-padded row it
moves the padding behind the real tokens, so that after any extraction slot 0 holds the CLS vector (the
one the pooler reads) and every row is right-padded. The mask is gathered with the same indices, never
sliced. Because the kept set is the ``keep`` best of a strict total order, position ``i`` is kept iff
fewer than ``keep`` positions beat it (its rank), and its output slot is the number of kept positions
that precede it in the output order (for a padded one: all kept real tokens plus the kept padding before
it). The kernels compute exactly that (parallel, no sort); the reference below uses stable sorts.
"""

from __future__ import annotations

import math

import torch

from . import dispatch
from ._checks import check_float, check_mask, check_same_device, check_tensor

OP = "select_gather"


def cls_positions(mask: torch.Tensor) -> torch.Tensor:
    """(B,) int64: each row's first real position (0 for rows with no real token).

    Args:
        mask: (B, N) bool, True = real token.
    """
    # argmax returns the first maximal index, and 0 for an all-False row.
    return torch.argmax(mask.to(torch.uint8), dim=1)


def preference_key(significance: float, position: int, is_cls: bool, is_real: bool) -> tuple[int, int, float, int]:
    """The selection rule for one position of a row: of two positions, the one with the larger key is kept first.

    Args:
        significance: the position's significance (read for real tokens other than CLS only).
        position: its index in the row, 0 <= position < N.
        is_cls: whether it is the row's CLS vector (see :func:`cls_positions`).
        is_real: whether it is a real token (mask True).

    Returns:
        (class, is NaN, significance, -position) with class 2 for CLS, 1 for another real token, 0 for
        padding. Keys of distinct positions differ, so the order is strict and total.
    """
    if is_cls or not is_real:
        return (2 if is_cls else 0, 0, 0.0, -position)
    if math.isnan(significance):
        return (1, 1, 0.0, -position)
    # +0.0 for -0.0: equal keys then, as for torch.sort (-0.0 == 0.0 compares equal anyway; this keeps the
    # key's printed form canonical).
    return (1, 0, significance + 0.0, -position)


def selection_order(significance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, N) int64: every row's positions from most to least preferred under the selection rule.

    Args:
        significance: (B, N) float.
        mask: (B, N) bool, True = real token.
    """
    B, N = mask.shape
    # Priority class: CLS 2, real 1, padding 0. Two stable sorts give the lexicographic order
    # (class desc, significance desc, position asc) without mixing classes into one float key.
    priority = mask.to(torch.int8)
    priority.scatter_(1, cls_positions(mask)[:, None], 2)
    # Padding ranks by position alone, whatever significance it was given.
    key = significance.float().masked_fill(~mask, 0.0)
    by_significance = torch.sort(key, dim=1, descending=True, stable=True).indices
    by_class = torch.sort(priority.gather(1, by_significance), dim=1, descending=True, stable=True).indices
    return by_significance.gather(1, by_class)


def select_gather_ref(
    hidden: torch.Tensor, significance: torch.Tensor, mask: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-PyTorch reference of :func:`select_gather`.

    Args:
        hidden: (B, N, D).
        significance: (B, N) float.
        mask: (B, N) bool, True = real token.
        keep: number of vectors to keep, 1 <= keep <= N.

    Returns:
        hidden_kept: (B, keep, D); mask_kept: (B, keep) bool; indices: (B, keep) int64 (real tokens
        ascending, then padding ascending).
    """
    B, N, D = hidden.shape
    chosen = selection_order(significance, mask)[:, :keep]
    # Output order key: padding after real tokens, position within each (N + i for padding).
    order_key = chosen + N * (~mask.gather(1, chosen)).long()
    indices = chosen.gather(1, order_key.argsort(dim=1))
    hidden_kept = hidden.gather(1, indices[:, :, None].expand(B, keep, D))
    return hidden_kept, mask.gather(1, indices), indices


@torch.library.custom_op("powerbert::select_gather", mutates_args=())
def _select_gather_op(
    hidden: torch.Tensor, significance: torch.Tensor, mask: torch.Tensor, keep: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return dispatch.implementation(OP, backend)(hidden, significance, mask, keep)


@_select_gather_op.register_fake
def _(hidden, significance, mask, keep, backend):
    B, N, D = hidden.shape
    return (
        hidden.new_empty(B, keep, D),
        mask.new_empty(B, keep),
        hidden.new_empty(B, keep, dtype=torch.int64),
    )


def _setup_context(ctx, inputs, output):
    hidden = inputs[0]
    ctx.save_for_backward(output[2])
    ctx.hidden_shape = hidden.shape
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad_hidden_kept, grad_mask, grad_indices):
    (indices,) = ctx.saved_tensors
    B, N, D = ctx.hidden_shape
    grad_hidden = grad_hidden_kept.new_zeros(B, N, D)
    grad_hidden.scatter_(1, indices[:, :, None].expand(-1, -1, D), grad_hidden_kept)
    return grad_hidden, None, None, None, None


_select_gather_op.register_autograd(_backward, setup_context=_setup_context)


def select_gather(
    hidden: torch.Tensor,
    significance: torch.Tensor,
    mask: torch.Tensor,
    keep: int,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the CLS vector and the ``keep - 1`` most significant other vectors of every row, in order.

    Args:
        hidden: (B, N, D) float16, bfloat16 or float32 word-vectors.
        significance: (B, N) float (computed in float32), e.g. from
            :func:`~powerbert_kernels.ops.attention_with_significance`.
        mask: (B, N) bool, True = real token.
        keep: vectors to keep per row, 1 <= keep <= N (an int, or a ``torch.SymInt`` under
            ``torch.compile``/``torch.export``).
        backend: ``"triton"``, ``"ext"``, ``"torch"`` or ``None`` (``POWERBERT_BACKEND``, else the
            fastest that can run).

    Returns:
        hidden_kept: (B, keep, D) the kept vectors: real tokens in their original order, then any
            padding (kept only when a row has fewer than ``keep`` real tokens).
        mask_kept: (B, keep) bool, the mask gathered with the same indices.
        indices: (B, keep) int64, the kept positions in that order (ascending for right-padded rows).
    """
    hidden = check_tensor("hidden", hidden, 3, "(B, N, D)")
    check_float("hidden", hidden)
    B, N, D = hidden.shape
    if N < 1 or D < 1:
        raise ValueError(f"hidden must have N and D of at least 1, got shape {tuple(hidden.shape)}")
    significance = check_tensor("significance", significance, 2, lambda: f"(B, N) = ({B}, {N})")
    if tuple(significance.shape) != (B, N):
        raise ValueError(f"significance must have shape (B, N) = ({B}, {N}), got {tuple(significance.shape)}")
    if not significance.is_floating_point():
        raise TypeError(f"significance must be a float tensor, got {significance.dtype}")
    check_same_device("significance", significance, hidden.device)
    check_mask("mask", mask, B, N, hidden.device)
    if isinstance(keep, bool) or not isinstance(keep, (int, torch.SymInt)):
        raise TypeError(f"keep must be an int, got {type(keep).__name__}")
    # A symbolic keep (torch.compile, torch.export) is left unchecked: comparing it with N would add a
    # guard on the sizes, which torch.export refuses even where the comparison always holds.
    if isinstance(keep, int) and isinstance(N, int) and not 1 <= keep <= N:
        raise ValueError(f"keep must be between 1 and N={N}, got {keep}")
    if B == 0:
        return hidden.new_empty(0, keep, D), mask.new_empty(0, keep), hidden.new_empty(0, keep, dtype=torch.int64)
    inputs = dispatch.SelectGatherInputs(hidden.device, hidden.dtype, batch=B, seq_len=N, hidden_size=D, keep=keep)
    name = dispatch.resolve(OP, inputs, backend)
    return torch.ops.powerbert.select_gather(hidden, significance.float().contiguous(), mask.contiguous(), keep, name)
