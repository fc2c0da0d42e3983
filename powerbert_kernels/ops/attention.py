"""Self-attention that also returns PoWER-BERT's significance score of every word-vector.

``significance[b, w] = sum_h sum_{q real} softmax(q_h . k_h * scale)[q, w]``: the total attention that
vector ``w`` receives over all heads and all real query rows (padded query rows do not vote, padded keys
receive probability 0). This is the ranking PoWER-BERT's extract layer uses.

The public entry point :func:`attention_with_significance` checks its arguments, picks a backend (see
:mod:`powerbert_kernels.ops.dispatch`) and calls the custom op ``powerbert::attention_with_significance``.
:func:`attention_with_significance_ref` is the pure-PyTorch reference (fp32 accumulation) that the other
backends are tested against. :func:`attention` is the same attention without significance (PyTorch's
SDPA), used for layers that keep every vector.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F

from . import dispatch
from ._checks import check_float, check_mask, check_same_device, check_tensor
from ._imports import when_imported

OP = "attention_with_significance"

# The reference materialises the probabilities of a block of query rows at a time, at most half as many
# scores as q has elements (and at least this many): its peak memory then stays within the layer's own
# activations, as a fused attention's does, while each block is still a large batched matmul.
_BLOCK_ELEMENTS = 1 << 16


def _masked_score_bias(key_padding_mask: torch.Tensor) -> torch.Tensor:
    # A finite large negative bias rather than -inf: masked keys still get exactly 0 probability when the
    # row has any real key (exp underflows), and a row without any real key attends uniformly instead of
    # producing NaN (HF's eager attention behaves the same). Every backend follows this convention.
    bias = torch.zeros(key_padding_mask.shape, dtype=torch.float32, device=key_padding_mask.device)
    return bias.masked_fill_(~key_padding_mask, torch.finfo(torch.float32).min)


def attention_with_significance_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    scale: float | None = None,
    exclude_self: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch reference of :func:`attention_with_significance` (fp32 accumulation).

    Args:
        q, k, v: (B, N, H, d), any float dtype.
        key_padding_mask: (B, N) bool, True = real token.
        scale: score scale, default ``d ** -0.5``.
        exclude_self: subtract each real vector's attention to itself from its significance.

    Returns:
        out: (B, N, H*d) in the dtype of ``q``; significance: (B, N) float32.
    """
    d = q.shape[3]

    def column_sums(probs: torch.Tensor, start: int) -> torch.Tensor:
        return column_sums_ref(probs, key_padding_mask, start, exclude_self)

    return blocked_attention(q, k, v, key_padding_mask, d**-0.5 if scale is None else float(scale), column_sums)


def column_sums_ref(
    probs: torch.Tensor, key_padding_mask: torch.Tensor, start: int, exclude_self: bool
) -> torch.Tensor:
    """The reference's significance of one block of query rows.

    Args:
        probs: (B, H, rows, N) float32 attention probabilities of query rows ``start .. start + rows``.
        key_padding_mask: (B, N) bool, True = real token (only real rows vote).
        start: the block's first query row.
        exclude_self: leave each row's probability on its own position out.

    Returns:
        (B, N) float32 column sums over heads and the block's real rows.
    """
    B, H, rows, N = probs.shape
    votes = key_padding_mask.float()
    # Column sums over heads and real query rows as one batched matvec: (B, 1, H*rows) @ (B, H*rows, N).
    w = votes[:, None, start : start + rows].expand(B, H, rows).reshape(B, 1, H * rows)
    sums = torch.bmm(w, probs.reshape(B, H * rows, N)).squeeze(1)
    if exclude_self:
        diag = torch.diagonal(probs, offset=start, dim1=-2, dim2=-1)
        sums[:, start : start + rows] -= diag.sum(dim=1) * votes[:, start : start + rows]
    return sums


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    scale: float,
    column_sums: Callable[[torch.Tensor, int], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention in fp32 over blocks of query rows, with each block's probabilities handed to ``column_sums``.

    The body of the reference, shared with the extension backend, which swaps in its own column sums.

    Args:
        q, k, v: (B, N, H, d); key_padding_mask: (B, N) bool; scale: score scale.
        column_sums: ``(probs, start) -> (B, N)``, the significance contribution of the block of query rows
            ``start .. start + rows`` whose probabilities are ``probs`` (B, H, rows, N) float32.

    Returns:
        out: (B, N, H*d) in the dtype of ``q``; significance: (B, N) float32, the sum over blocks.
    """
    B, N, H, d = q.shape
    if B * H * N * d == 0:
        return q.new_zeros(B, N, H * d), torch.zeros(B, N, dtype=torch.float32, device=q.device)
    # One contiguous (B*H, N, d) copy of each input, scale folded into q: every block's GEMMs then read
    # dense operands instead of re-gathering the strided projection views block after block.
    qf = torch.empty(B, H, N, d, dtype=torch.float32, device=q.device)
    qf = qf.copy_(q.transpose(1, 2)).mul_(scale).view(B * H, N, d)
    kt = k.float().transpose(1, 2).reshape(B * H, N, d).transpose(1, 2)
    vf = v.float().transpose(1, 2).reshape(B * H, N, d)
    bias = _masked_score_bias(key_padding_mask)[:, None, None, :].expand(B, H, 1, N).reshape(B * H, 1, N)
    block = max(1, min(N, max(_BLOCK_ELEMENTS, B * N * H * d // 2) // (B * H * N)))
    out = torch.empty(B, N, H, d, dtype=torch.float32, device=q.device)
    significance = torch.zeros(B, N, dtype=torch.float32, device=q.device)
    for start in range(0, N, block):
        stop = min(N, start + block)
        rows = stop - start
        # The padding bias enters as the GEMM's initial value (beta = 1): no extra pass over the scores.
        probs = torch.softmax(torch.baddbmm(bias, qf[:, start:stop], kt), dim=-1)
        out[:, start:stop] = torch.bmm(probs, vf).view(B, H, rows, d).transpose(1, 2)
        significance += column_sums(probs.view(B, H, rows, N), start)
    return out.view(B, N, H * d).to(q.dtype), significance


def attention_with_significance_dropout(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    scale: float,
    exclude_self: bool,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference with dropout on the attention probabilities, differentiated by autograd.

    Training only: the probabilities are dropped as the stock layer drops them, after the significance
    is read from them (the paper's significance is taken before dropout). Autograd keeps the (B, H, N, N)
    probabilities and the dropout mask for the backward pass, as the stock eager attention does; the
    custom op's recomputing backward cannot be used, since a recomputation would draw another mask.

    Args:
        q, k, v: (B, N, H, d); key_padding_mask: (B, N) bool; scale: score scale; dropout_p in (0, 1).

    Returns:
        out: (B, N, H*d) in the dtype of ``q``; significance: (B, N) float32, no gradient.
    """
    B, N, H, d = q.shape
    scores = torch.matmul(q.float().transpose(1, 2) * scale, k.float().permute(0, 2, 3, 1))
    probs = torch.softmax(scores + _masked_score_bias(key_padding_mask)[:, None, None, :], dim=-1)
    with torch.no_grad():
        significance = column_sums_ref(probs.detach(), key_padding_mask, 0, exclude_self)
    out = torch.matmul(F.dropout(probs, p=dropout_p, training=True), v.float().transpose(1, 2))
    return out.transpose(1, 2).reshape(B, N, H * d).to(q.dtype), significance


def _check_dropout(dropout_p: float, backend: str | None) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0 <= dropout_p < 1:
        raise ValueError(f"dropout_p must be a probability in [0, 1), got {dropout_p!r}")
    if dropout_p > 0:
        forced = dispatch.requested_backend(backend)
        if forced not in (None, "torch"):
            raise ValueError(
                f"dropout_p={dropout_p:g}: attention dropout (training) runs on the torch backend only; the "
                f"{forced!r} backend was forced (argument or POWERBERT_BACKEND), which does not apply it"
            )
    return float(dropout_p)


@torch.library.custom_op("powerbert::attention_with_significance", mutates_args=())
def _attention_with_significance_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    scale: float,
    exclude_self: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    fn = dispatch.implementation(OP, backend)
    return fn(q, k, v, key_padding_mask, scale, exclude_self)


@_attention_with_significance_op.register_fake
def _(q, k, v, key_padding_mask, scale, exclude_self, backend):
    B, N, H, d = q.shape
    return q.new_empty(B, N, H * d), q.new_empty(B, N, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    q, k, v, key_padding_mask, scale, exclude_self, backend = inputs
    ctx.save_for_backward(q, k, v, key_padding_mask)
    ctx.scale = scale
    ctx.mark_non_differentiable(output[1])


def _recompute_qkv_grads(forward, q, k, v, grad_out):
    # Recompute the forward under autograd (flash-attention style recomputation: nothing of size
    # N x N was kept from the forward) and differentiate it.
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in (q, k, v)]
        out = forward(*leaves)
        wanted = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out)) if wanted else iter(())
    return tuple(next(grads) if t.requires_grad else None for t in leaves)


def _backward(ctx, grad_out, grad_significance):
    # Significance only ranks vectors: it carries no gradient.
    q, k, v, key_padding_mask = ctx.saved_tensors
    dq, dk, dv = _recompute_qkv_grads(
        lambda q, k, v: attention_with_significance_ref(q, k, v, key_padding_mask, ctx.scale)[0],
        q,
        k,
        v,
        grad_out,
    )
    return dq, dk, dv, None, None, None, None


_attention_with_significance_op.register_autograd(_backward, setup_context=_setup_context)


def attention_flops(batch: int, seq_len: int, heads: int, head_dim: int) -> int:
    """Matmul FLOPs of self-attention over (B, N, H, d) inputs: Q K^T and P V, 2 FLOPs per multiply-add.

    What ``FlopCounterMode`` counts for a plain attention, with or without significance (the column
    sums are not matmul work), and the yardstick of the kernels' achieved TFLOP/s.
    """
    return 4 * batch * heads * seq_len * seq_len * head_dim


def _attention_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    return attention_flops(*q_shape)


def _check_qkv(q, k, v):
    q = check_tensor("q", q, 4, "(B, N, H, d)")
    check_float("q", q)
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, 4, "(B, N, H, d)")
        if t.shape != q.shape:
            raise ValueError(f"{name} must have the shape of q {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
        check_same_device(name, t, q.device)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension (d), got strides {t.stride()}")
    if q.shape[1] < 1 or q.shape[2] < 1 or q.shape[3] < 1:
        raise ValueError(f"q must have N, H and d of at least 1, got shape {tuple(q.shape)}")
    return q


def _check_scale(scale: float | None, head_dim: int) -> float:
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return float(scale)


def attention_with_significance(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    *,
    scale: float | None = None,
    exclude_self: bool = False,
    backend: str | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head self-attention plus each vector's significance, in one pass over the scores.

    Args:
        q, k, v: (B, N, H, d) float16, bfloat16 or float32, the layout the Q/K/V projections produce
            (``linear(x).view(B, N, H, d)``); any strides with the last dimension contiguous.
        key_padding_mask: (B, N) bool, True = real token. Padded keys get probability 0; padded query
            rows get an output but do not vote in the significance.
        scale: score scale, default ``1 / sqrt(d)``.
        exclude_self: leave each vector's attention to itself out of its own significance (the
            original PoWER-BERT code did so).
        backend: ``"triton"``, ``"ext"``, ``"torch"`` or ``None`` (``POWERBERT_BACKEND``, else the
            fastest that can run).
        dropout_p: dropout on the attention probabilities (training), applied after the significance is
            read; only the torch backend applies it (:func:`attention_with_significance_dropout`), a
            forced ``triton``/``ext`` backend refuses it.

    Returns:
        out: (B, N, H*d) in the dtype of ``q``, the layout the output projection reads.
        significance: (B, N) float32; padded positions get 0.
    """
    q = _check_qkv(q, k, v)
    B, N, H, d = q.shape
    check_mask("key_padding_mask", key_padding_mask, B, N, q.device)
    scale = _check_scale(scale, d)
    dropout_p = _check_dropout(dropout_p, backend)
    if B == 0:
        # An empty batch: nothing to launch (a kernel grid or a block size of zero rows is undefined).
        return q.new_empty(0, N, H * d), torch.zeros(0, N, dtype=torch.float32, device=q.device)
    if dropout_p > 0:
        return attention_with_significance_dropout(q, k, v, key_padding_mask, scale, bool(exclude_self), dropout_p)
    inputs = dispatch.AttentionInputs(q.device, q.dtype, batch=B, seq_len=N, heads=H, head_dim=d)
    name = dispatch.resolve(OP, inputs, backend)
    return torch.ops.powerbert.attention_with_significance(q, k, v, key_padding_mask, scale, bool(exclude_self), name)


def _plain_attention(q, k, v, key_padding_mask, scale, implementation):
    B, N, H, d = q.shape
    if implementation == "eager":
        # HF's eager attention, operation for operation and in the input dtype: scores, scale, additive
        # dtype-min mask, softmax, weighted sum. A patched eager model that removes nothing is then
        # bit-identical to the stock one.
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        scores = torch.matmul(qt, kt.transpose(2, 3)) * scale
        if key_padding_mask is not None:
            bias = torch.zeros(B, 1, 1, N, dtype=q.dtype, device=q.device)
            scores = scores + bias.masked_fill_(~key_padding_mask[:, None, None, :], torch.finfo(q.dtype).min)
        probs = torch.softmax(scores, dim=-1)
        return torch.matmul(probs, vt).transpose(1, 2).reshape(B, N, H * d)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=None if key_padding_mask is None else key_padding_mask[:, None, None, :],
        scale=scale,
    )
    return out.transpose(1, 2).reshape(B, N, H * d)


@torch.library.custom_op("powerbert::attention", mutates_args=())
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    scale: float,
    implementation: str,
) -> torch.Tensor:
    return _plain_attention(q, k, v, key_padding_mask, scale, implementation)


@_attention_op.register_fake
def _(q, k, v, key_padding_mask, scale, implementation):
    B, N, H, d = q.shape
    return q.new_empty(B, N, H * d)


def _attention_setup_context(ctx, inputs, output):
    q, k, v, key_padding_mask, scale, implementation = inputs
    ctx.save_for_backward(q, k, v, key_padding_mask)
    ctx.scale = scale
    ctx.implementation = implementation


def _attention_backward(ctx, grad_out):
    q, k, v, key_padding_mask = ctx.saved_tensors
    dq, dk, dv = _recompute_qkv_grads(
        lambda q, k, v: _plain_attention(q, k, v, key_padding_mask, ctx.scale, ctx.implementation),
        q,
        k,
        v,
        grad_out,
    )
    return dq, dk, dv, None, None, None


_attention_op.register_autograd(_attention_backward, setup_context=_attention_setup_context)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    *,
    scale: float | None = None,
    implementation: str = "sdpa",
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Plain multi-head self-attention, without significance.

    For layers that keep every vector, where no ranking is needed: it costs what the stock model's
    attention costs. Registered as ``powerbert::attention`` so FLOP counting and ``torch.compile`` see
    it as one op.

    Args:
        q, k, v: (B, N, H, d) float16, bfloat16 or float32, last dimension contiguous.
        key_padding_mask: (B, N) bool, True = real token, or None when every token is real (on CUDA
            that lets SDPA take its flash kernel, as the stock model does for unpadded batches).
        scale: score scale, default ``1 / sqrt(d)``.
        implementation: ``"sdpa"`` (PyTorch's fused attention) or ``"eager"`` (explicit scores and
            softmax in the input dtype, operation for operation as HF's eager attention): a patched
            model follows the attention implementation it was loaded with, so nothing changes where
            nothing is removed.
        dropout_p: dropout on the attention probabilities (training): SDPA's own, differentiated by
            autograd (the custom op's recomputing backward would draw another mask).

    Returns:
        out: (B, N, H*d) in the dtype of ``q``.
    """
    q = _check_qkv(q, k, v)
    B, N, H, d = q.shape
    if key_padding_mask is not None:
        check_mask("key_padding_mask", key_padding_mask, B, N, q.device)
    if implementation not in ("sdpa", "eager"):
        raise ValueError(f"implementation must be 'sdpa' or 'eager', got {implementation!r}")
    if _check_dropout(dropout_p, "torch") > 0:
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=None if key_padding_mask is None else key_padding_mask[:, None, None, :],
            dropout_p=dropout_p,
            scale=_check_scale(scale, d),
        )
        return out.transpose(1, 2).reshape(B, N, H * d)
    return torch.ops.powerbert.attention(q, k, v, key_padding_mask, _check_scale(scale, d), implementation)


def _register_flop_formulas(flop_counter: ModuleType) -> None:
    flop_counter.register_flop_formula(torch.ops.powerbert.attention_with_significance)(_attention_flops)
    flop_counter.register_flop_formula(torch.ops.powerbert.attention)(_attention_flops)


# When FlopCounterMode's module is imported rather than now: it imports Triton, which importing the ops must not.
when_imported("torch.utils.flop_counter", _register_flop_formulas)
