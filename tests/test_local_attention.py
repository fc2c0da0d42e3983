"""Local (sliding-window) attention over vectors that keep their original positions."""

from __future__ import annotations

import pytest
import torch

from powerbert_kernels import ops


def _qkv(B=2, n=9, H=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, n, H, d, generator=g) for _ in range(3)]


def _direct(q, k, v, mask, positions, window):
    # One query at a time: softmax over the real keys within the window, significance summed by hand.
    B, n, H, d = q.shape
    out = torch.zeros(B, n, H, d, dtype=torch.float64)
    significance = torch.zeros(B, n, dtype=torch.float64)
    for b in range(B):
        for i in range(n):
            seen = [j for j in range(n) if mask[b, j] and abs(int(positions[b, i]) - int(positions[b, j])) <= window]
            scores = torch.einsum("hd,jhd->hj", q[b, i].double(), k[b, seen].double()) * d**-0.5
            probs = scores.softmax(dim=-1)
            out[b, i] = torch.einsum("hj,jhd->hd", probs, v[b, seen].double())
            if mask[b, i]:
                significance[b, seen] += probs.sum(dim=0)
    return out.reshape(B, n, H * d), significance


def test_local_attention_matches_a_direct_computation():
    q, k, v = _qkv()
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    # Kept vectors of an earlier extraction: increasing original positions with gaps.
    positions = torch.tensor([[0, 1, 4, 5, 9, 12, 13, 20, 21], [0, 2, 3, 7, 8, 11, 15, 16, 17]])
    want_out, want_sig = _direct(q, k, v, mask, positions, window=3)
    out, sig = ops.local_attention_with_significance(q, k, v, mask, positions, 3)
    real = mask[:, :, None].expand(-1, -1, out.shape[-1])
    torch.testing.assert_close(out[real].double(), want_out[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sig.double(), want_sig, atol=1e-5, rtol=1e-5)
    for implementation in ("sdpa", "eager"):
        plain = ops.local_attention(q, k, v, mask, positions, 3, implementation=implementation)
        torch.testing.assert_close(plain[real].double(), want_out[real], atol=1e-5, rtol=1e-5)


def test_a_window_over_every_position_is_global_attention():
    q, k, v = _qkv()
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 7:] = False
    positions = torch.arange(9)[None]
    out, sig = ops.local_attention_with_significance(q, k, v, mask, positions, 8, exclude_self=True)
    want_out, want_sig = ops.attention_with_significance_ref(q, k, v, mask, exclude_self=True)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sig, want_sig, atol=1e-5, rtol=1e-5)


def test_local_attention_refuses_bad_arguments():
    q, k, v = _qkv()
    mask = torch.ones(2, 9, dtype=torch.bool)
    with pytest.raises(ValueError, match="positions must have shape"):
        ops.local_attention(q, k, v, mask, torch.arange(8)[None], 3)
    with pytest.raises(TypeError, match="positions must be an integer tensor"):
        ops.local_attention(q, k, v, mask, torch.arange(9.0)[None], 3)
    with pytest.raises(ValueError, match="window must be a non-negative int"):
        ops.local_attention_with_significance(q, k, v, mask, torch.arange(9)[None], -1)
    with pytest.raises(ValueError, match="implementation must be"):
        ops.local_attention(q, k, v, mask, torch.arange(9)[None], 3, implementation="flash")
