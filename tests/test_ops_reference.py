"""The reference ops against direct, naive computations on random inputs and odd shapes."""

from __future__ import annotations

import sys

import pytest
import torch

from powerbert_kernels import ops

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def random_mask(B: int, N: int, kind: str, g: torch.Generator) -> torch.Tensor:
    """(B, N) bool: every row's real length random in [1, N], padding on the right or left."""
    lengths = torch.randint(1, N + 1, (B,), generator=g)
    lengths[0] = N
    if kind == "cls_only":
        lengths[-1] = 1
    pos = torch.arange(N)[None, :]
    if kind == "left":
        return pos >= (N - lengths)[:, None]
    return pos < lengths[:, None]


def naive_attention(q, k, v, mask, scale, exclude_self):
    """Direct formula in float64: softmax over real keys, significance = column sums over real rows."""
    q, k, v = q.double(), k.double(), v.double()
    B, N, H, d = q.shape
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, N, H * d)
    sig = torch.zeros(B, N, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for qi in range(N):
                if mask[b, qi]:
                    row = probs[b, h, qi].clone()
                    if exclude_self:
                        row[qi] = 0
                    sig[b] += row
    return out, sig


@pytest.mark.parametrize(
    "B,N,H,d,kind",
    [
        (1, 1, 1, 8, "right"),
        (2, 7, 3, 16, "right"),
        (3, 13, 2, 32, "left"),
        (2, 33, 4, 8, "cls_only"),
        (1, 64, 12, 32, "right"),
        (4, 65, 1, 64, "left"),
    ],
)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_attention_ref_matches_naive(B, N, H, d, kind, exclude_self):
    g = torch.Generator().manual_seed(B * 1000 + N)
    q, k, v = (torch.randn(B, N, H, d, generator=g) for _ in range(3))
    mask = random_mask(B, N, kind, g)
    out, sig = ops.attention_with_significance_ref(q, k, v, mask, exclude_self=exclude_self)
    ref_out, ref_sig = naive_attention(q, k, v, mask, d**-0.5, exclude_self)
    assert out.dtype == torch.float32 and sig.dtype == torch.float32
    assert out.shape == (B, N, H * d) and sig.shape == (B, N)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sig.double(), ref_sig, atol=1e-5, rtol=1e-5)
    assert (sig[~mask] == 0).all(), "padded positions must get significance 0"


def test_attention_significance_sums_to_heads_times_real_rows():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 20, 4, 16, generator=g) for _ in range(3))
    mask = random_mask(3, 20, "left", g)
    _, sig = ops.attention_with_significance(q, k, v, mask)
    torch.testing.assert_close(sig.sum(dim=1), 4 * mask.sum(dim=1).float())


def test_attention_ref_blocked_equals_unblocked(monkeypatch):
    # The reference processes query rows in blocks to bound memory; the blocks must not change results.
    attention_module = sys.modules["powerbert_kernels.ops.attention"]

    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 37, 3, 8, generator=g) for _ in range(3))
    mask = random_mask(2, 37, "right", g)
    monkeypatch.setattr(attention_module, "_BLOCK_ELEMENTS", 1 << 30)  # one block
    whole = ops.attention_with_significance_ref(q, k, v, mask, exclude_self=True)
    monkeypatch.setattr(attention_module, "_BLOCK_ELEMENTS", 1)  # blocks of d = 8 query rows
    blocked = ops.attention_with_significance_ref(q, k, v, mask, exclude_self=True)
    torch.testing.assert_close(blocked[0], whole[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(blocked[1], whole[1], atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_half_precision_within_dtype_tolerance(dtype):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 31, 3, 16, generator=g) for _ in range(3))
    mask = random_mask(2, 31, "left", g)
    out, sig = ops.attention_with_significance(q.to(dtype), k.to(dtype), v.to(dtype), mask)
    ref_out, ref_sig = naive_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask, 16**-0.5, False)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref_out, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(sig.double(), ref_sig, atol=1e-4, rtol=1e-5)


def test_attention_accepts_projection_views():
    # The model passes linear(x).view(B, N, H, d): non-contiguous across heads is the normal case.
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, 3 * 3 * 8, generator=g)
    q, k, v = (t.view(2, 9, 3, 8) for t in x.split(24, dim=-1))
    assert not q.is_contiguous()
    mask = torch.ones(2, 9, dtype=torch.bool)
    out, sig = ops.attention_with_significance(q, k, v, mask)
    ref = ops.attention_with_significance_ref(q.contiguous(), k.contiguous(), v.contiguous(), mask)
    torch.testing.assert_close(out, ref[0])
    torch.testing.assert_close(sig, ref[1])


def test_plain_attention_matches_reference_output():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(3, 17, 2, 8, generator=g) for _ in range(3))
    mask = random_mask(3, 17, "right", g)
    ref, _ = ops.attention_with_significance_ref(q, k, v, mask)
    for implementation in ("sdpa", "eager"):
        out = ops.attention(q, k, v, mask, implementation=implementation)
        real = mask[:, :, None].expand_as(out)
        torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)
        # No mask means every token is real.
        everything = torch.ones_like(mask)
        torch.testing.assert_close(
            ops.attention(q, k, v, None, implementation=implementation),
            ops.attention_with_significance_ref(q, k, v, everything)[0],
            atol=1e-5,
            rtol=1e-5,
        )


def naive_select(hidden, sig, mask, keep):
    """Per-row loop: CLS (first real position), then real tokens by (significance desc, position asc)."""
    B, N, D = hidden.shape
    idx = torch.empty(B, keep, dtype=torch.long)
    for b in range(B):
        real = [i for i in range(N) if mask[b, i]]
        cls = real[0] if real else 0
        others = sorted((i for i in real if i != cls), key=lambda i: (-float(sig[b, i]), i))
        pads = [i for i in range(N) if not mask[b, i] and i != cls]
        chosen = ([cls] + others + pads)[:keep]
        idx[b] = torch.tensor(sorted(i for i in chosen if mask[b, i]) + sorted(i for i in chosen if not mask[b, i]))
    return hidden.gather(1, idx[:, :, None].expand(B, keep, D)), mask.gather(1, idx), idx


@pytest.mark.parametrize(
    "B,N,D,keep,kind",
    [
        (1, 1, 4, 1, "right"),
        (2, 2, 3, 1, "left"),
        (3, 7, 5, 4, "right"),
        (4, 63, 8, 20, "left"),
        (2, 65, 7, 65, "right"),
        (3, 127, 16, 3, "cls_only"),
        (2, 257, 9, 100, "left"),
    ],
)
def test_select_gather_ref_matches_naive(B, N, D, keep, kind):
    g = torch.Generator().manual_seed(B * 100 + N)
    hidden = torch.randn(B, N, D, generator=g)
    mask = random_mask(B, N, kind, g)
    _, sig = ops.attention_with_significance(*(torch.randn(B, N, 2, 4, generator=g) for _ in range(3)), mask)
    got = ops.select_gather(hidden, sig, mask, keep)
    want = naive_select(hidden, sig, mask, keep)
    assert torch.equal(got[2], want[2])
    assert torch.equal(got[1], want[1])
    assert torch.equal(got[0], want[0])
    assert got[2].dtype == torch.int64 and got[1].dtype == torch.bool


def test_select_gather_ties_go_to_lower_position_and_padding_last():
    hidden = torch.randn(2, 8, 3)
    sig = torch.tensor([[0.0, 1, 1, 1, 1, 0, 0, 0], [5.0, 5, 5, 5, 5, 5, 5, 5]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    _, mask_kept, idx = ops.select_gather(hidden, sig, mask, 3)
    assert idx.tolist() == [[0, 1, 2], [3, 4, 5]]  # row 1: CLS is the first real token (position 3)
    assert mask_kept.all()
    _, mask_kept, idx = ops.select_gather(hidden, sig, mask, 7)
    assert idx[0].tolist() == [0, 1, 2, 3, 4, 5, 6]  # fewer real tokens than keep: padding by position
    assert mask_kept[0].tolist() == [True] * 5 + [False] * 2
    assert idx[1].tolist() == [3, 4, 5, 6, 7, 0, 1]  # left padding: real tokens first, then padding
    assert mask_kept[1].tolist() == [True] * 5 + [False] * 2


def test_select_gather_keeps_cls_even_when_least_significant():
    hidden = torch.randn(1, 6, 2)
    sig = torch.tensor([[0.0, 9, 8, 7, 6, 5]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    _, _, idx = ops.select_gather(hidden, sig, mask, 2)
    assert idx.tolist() == [[0, 1]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_select_gather_copies_exactly_in_every_dtype(dtype):
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(3, 11, 5, generator=g).to(dtype)
    sig = torch.rand(3, 11, generator=g)
    mask = random_mask(3, 11, "left", g)
    kept, _, idx = ops.select_gather(hidden, sig, mask, 5)
    assert kept.dtype == dtype
    assert torch.equal(kept, hidden.gather(1, idx[:, :, None].expand(3, 5, 5)))


def test_custom_ops_pass_opcheck():
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 9, 3, 8, generator=g) for _ in range(3))
    mask = random_mask(2, 9, "left", g)
    torch.library.opcheck(torch.ops.powerbert.attention_with_significance, (q, k, v, mask, 0.3, True, "torch"))
    torch.library.opcheck(torch.ops.powerbert.attention, (q, k, v, mask, 0.3, "sdpa"))
    torch.library.opcheck(torch.ops.powerbert.attention, (q, k, v, mask, 0.3, "eager"))
    torch.library.opcheck(torch.ops.powerbert.attention, (q, k, v, None, 0.3, "sdpa"))
    hidden = torch.randn(2, 9, 5, generator=g)
    sig = torch.rand(2, 9, generator=g)
    torch.library.opcheck(torch.ops.powerbert.select_gather, (hidden, sig, mask, 4, "torch"))


def test_gradients_match_plain_autograd():
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 10, 2, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = random_mask(2, 10, "right", g)
    grad = torch.randn(2, 10, 16, generator=g)
    out, sig = ops.attention_with_significance(q, k, v, mask)
    assert not sig.requires_grad
    got = torch.autograd.grad(out, (q, k, v), grad)
    ref_out, _ = naive_attention(q, k, v, mask, 8**-0.5, False)
    want = torch.autograd.grad(ref_out.float(), (q, k, v), grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    hidden = torch.randn(2, 10, 4, generator=g, requires_grad=True)
    kept, _, idx = ops.select_gather(hidden, sig, mask, 6)
    (grad_hidden,) = torch.autograd.grad(kept.sum(), hidden)
    expected = torch.zeros(2, 10)
    expected.scatter_(1, idx, 1.0)
    torch.testing.assert_close(grad_hidden, expected[:, :, None].expand(2, 10, 4))
