"""Triton attention-with-significance against the reference (on the CPU through Triton's interpreter).

Error bounds follow flash-attention's practice: the kernel's error against the fp32 reference may be at
most twice PyTorch's own error when it computes the same attention in the input dtype, plus a small
floor. Outputs are launched into NaN-filled buffers so that an element the kernel never writes fails.
"""

from __future__ import annotations

import pytest
import torch
from tolerance import assert_close_to_reference

pytest.importorskip("triton")  # the `triton` extra

from powerbert_kernels import ops
from powerbert_kernels.ops import AttentionInputs, BackendUnavailableError, attention_with_significance_ref
from powerbert_kernels.triton.attention_significance import (
    AttentionConfig,
    attention_with_significance_triton,
    default_config,
)
from powerbert_kernels.triton.backend import TritonAttention

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"


def make_mask(batch: int, length: int, padding: str, seed: int = 0) -> torch.Tensor:
    """(B, N) bool. ``padding``: none, right, left, cls_only (one real token then padding), mixed (rows
    cycle right / left / cls_only / none), empty (mixed, and the last row has no real token at all)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    cycle = ["right", "left", "cls_only", "none"] if padding in ("mixed", "empty") else [padding]
    for row in range(batch):
        kind = cycle[row % len(cycle)]
        real = int(torch.randint(1, length + 1, (1,), generator=g))
        real = length if kind == "none" else 1 if kind == "cls_only" else real
        if kind == "left":
            mask[row, length - real :] = True
        else:
            mask[row, :real] = True
    if padding == "empty":
        mask[-1] = False
    return mask


def make_qkv(batch: int, length: int, heads: int, head_dim: int, dtype: torch.dtype, layout: str, seed: int = 0):
    """Random q, k, v (B, N, H, d), never zeros. ``fused``: views of one (B, N, 3*H*d) projection output,
    as the model makes them; ``head_major``: transposed views of (B, H, N, d) tensors."""
    g = torch.Generator().manual_seed(seed)
    if layout == "fused":
        x = torch.randn(batch, length, 3 * heads * head_dim, generator=g).to(dtype)
        return tuple(t.view(batch, length, heads, head_dim) for t in x.split(heads * head_dim, dim=-1))
    return tuple(torch.randn(batch, heads, length, head_dim, generator=g).to(dtype).transpose(1, 2) for _ in range(3))


def same_dtype_attention(q, k, v, mask, scale, exclude_self):
    """What PyTorch computes when it does the same attention in the input dtype (the error yardstick)."""
    B, N, H, d = q.shape
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    scores = (qt @ kt.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(q.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    out = (probs @ vt).transpose(1, 2).reshape(B, N, H * d)
    votes = probs * mask[:, None, :, None].to(probs.dtype)
    if exclude_self:
        votes = votes * (1 - torch.eye(N, dtype=probs.dtype))
    return out, votes.sum(dim=(1, 2), dtype=torch.float32).to(q.dtype)


def check_against_reference(q, k, v, mask, exclude_self, config=None):
    B, N, H, d = q.shape
    scale = d**-0.5
    out = torch.full((B, N, H * d), float("nan"), dtype=q.dtype, device=DEVICE)
    sig = torch.full((B, N), float("nan"), dtype=torch.float32, device=DEVICE)
    dq, dk, dv, dmask = (t.to(DEVICE) for t in (q, k, v, mask))
    got_out, got_sig = attention_with_significance_triton(
        dq, dk, dv, dmask, scale, exclude_self, out=out, significance=sig, config=config
    )
    assert got_out is out and got_sig is sig
    ref_out, ref_sig = attention_with_significance_ref(q, k, v, mask, scale, exclude_self)
    pt_out, pt_sig = same_dtype_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), dmask, scale, exclude_self)
    got_out, got_sig = got_out.cpu(), got_sig.cpu()
    assert torch.isfinite(got_out).all() and torch.isfinite(got_sig).all()
    assert_close_to_reference("out", got_out, ref_out, pt_out, q.dtype)
    assert_close_to_reference("significance", got_sig, ref_sig, pt_sig, q.dtype)
    # Padding receives exactly no attention from real rows, and only real rows vote.
    assert (got_sig[~mask] == 0).all()


def config_for(variant, B, N, H, d, dtype):
    if variant == "two_pass":
        return two_pass(B, N, H, d, dtype)
    if variant == "single_pass":
        return default_config(B, N, H, d, dtype, DEVICE, variant="single_pass")
    return None


def two_pass(B, N, H, d, dtype):
    if N > 256:
        return default_config(B, N, H, d, dtype, DEVICE, variant="two_pass")
    # Small tiles so that short test lengths still cross several key and query blocks.
    return AttentionConfig(
        "two_pass", block_m=32, block_n=16, num_warps=4, num_stages=2, sig_block_m=16, sig_block_n=32
    )


# Every listed length, head count, head dim, dtype and padding kind appears; both kernels run on short N.
CASES = [
    # B, N, H, d, dtype, padding, exclude_self, layout, variant
    (1, 1, 1, 32, torch.float32, "none", False, "fused", "default"),
    (3, 2, 3, 64, torch.float16, "right", True, "fused", "default"),
    (4, 7, 12, 32, torch.float32, "mixed", True, "fused", "single_pass"),
    (2, 63, 3, 64, torch.float16, "cls_only", False, "fused", "two_pass"),
    (1, 64, 12, 64, torch.float32, "none", True, "head_major", "single_pass"),
    (3, 65, 1, 32, torch.float16, "left", False, "fused", "two_pass"),
    (4, 127, 3, 32, torch.float32, "empty", True, "fused", "two_pass"),
    (5, 127, 3, 64, torch.float16, "empty", False, "head_major", "default"),
    (2, 257, 3, 64, torch.float16, "mixed", True, "fused", "default"),
    (3, 200, 2, 32, torch.float16, "mixed", True, "fused", "single_pass"),
    (2, 257, 1, 32, torch.float32, "left", False, "head_major", "default"),
    (2, 40, 2, 48, torch.float32, "right", False, "fused", "single_pass"),
    (3, 33, 3, 8, torch.float16, "mixed", True, "fused", "two_pass"),
    # Longer than one 1024-position scan of the mask.
    (2, 1100, 1, 16, torch.float16, "mixed", True, "fused", "default"),
]


@pytest.mark.parametrize(
    "B, N, H, d, dtype, padding, exclude_self, layout, variant",
    CASES,
    ids=[f"B{c[0]}-N{c[1]}-H{c[2]}-d{c[3]}-{str(c[4])[6:]}-{c[5]}-{'excl-' * c[6]}{c[7]}-{c[8]}" for c in CASES],
)
def test_matches_reference(B, N, H, d, dtype, padding, exclude_self, layout, variant):
    q, k, v = make_qkv(B, N, H, d, dtype, layout, seed=N * 31 + d)
    mask = make_mask(B, N, padding, seed=N)
    check_against_reference(q, k, v, mask, exclude_self, config_for(variant, B, N, H, d, dtype))


def test_default_config_picks_single_pass_only_for_short_16_bit_rows():
    assert default_config(2, 128, 12, 64, torch.float16, DEVICE).variant == "single_pass"
    assert default_config(2, 128, 12, 128, torch.bfloat16, DEVICE).variant == "single_pass"
    assert default_config(2, 129, 12, 64, torch.float16, DEVICE).variant == "two_pass"
    assert default_config(2, 64, 12, 64, torch.float32, DEVICE).variant == "two_pass"
    assert default_config(2, 64, 12, 64, torch.float16, DEVICE, variant="two_pass").variant == "two_pass"
    assert default_config(2, 256, 12, 64, torch.float16, DEVICE, variant="single_pass").block_n == 256
    with pytest.raises(ValueError, match="variant"):
        default_config(2, 64, 12, 64, torch.float16, DEVICE, variant="three_pass")


def test_both_variants_agree_and_all_padding_rows_attend_uniformly():
    B, N, H, d = 3, 20, 2, 32
    q, k, v = make_qkv(B, N, H, d, torch.float32, "fused", seed=5)
    mask = make_mask(B, N, "empty", seed=3)
    args = [t.to(DEVICE) for t in (q, k, v, mask)]
    single = attention_with_significance_triton(
        *args, d**-0.5, False, config=config_for("single_pass", B, N, H, d, torch.float32)
    )
    double = attention_with_significance_triton(*args, d**-0.5, False, config=two_pass(B, N, H, d, torch.float32))
    torch.testing.assert_close(single[0], double[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single[1], double[1], rtol=1e-5, atol=1e-5)
    # The last row has no real token: every key gets weight 1/N, so each output is the mean of v.
    mean_v = v[-1].float().mean(dim=0).reshape(-1)
    torch.testing.assert_close(single[0][-1].cpu(), mean_v.expand(N, -1), rtol=1e-5, atol=1e-5)
    assert (single[1][-1] == 0).all()


def test_public_op_forced_triton_matches_reference(monkeypatch):
    monkeypatch.setenv("POWERBERT_BACKEND", "triton")
    q, k, v = make_qkv(2, 9, 2, 32, torch.float32, "fused", seed=1)
    mask = make_mask(2, 9, "mixed", seed=1)
    out, sig = ops.attention_with_significance(*(t.to(DEVICE) for t in (q, k, v, mask)), exclude_self=True)
    ref_out, ref_sig = attention_with_significance_ref(q, k, v, mask, exclude_self=True)
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sig.cpu(), ref_sig, rtol=1e-5, atol=1e-5)


def test_dispatch_facts():
    facts = AttentionInputs(DEVICE, torch.float16, batch=2, seq_len=128, heads=12, head_dim=64)
    assert TritonAttention.not_supported_reasons(facts) == []
    too_wide = AttentionInputs(DEVICE, torch.float16, batch=2, seq_len=128, heads=2, head_dim=512)
    assert "head dim 512 is larger than 256" in TritonAttention.not_supported_reasons(too_wide)
    if ON_GPU:
        assert ops.resolve("attention_with_significance", facts) == "triton"
    else:
        # The interpreter is exact but slow: automatic dispatch must not pick it.
        assert ops.explain("attention_with_significance", facts)["triton"]
        assert ops.resolve("attention_with_significance", facts) != "triton"


@pytest.mark.skipif(ON_GPU, reason="the interpreter's bfloat16 limitation only applies on the CPU")
def test_forced_bfloat16_in_interpreter_says_why():
    q, k, v = make_qkv(1, 4, 1, 32, torch.bfloat16, "fused")
    with pytest.raises(BackendUnavailableError, match="bfloat16"):
        ops.attention_with_significance(q, k, v, torch.ones(1, 4, dtype=torch.bool), backend="triton")


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (the CPU interpreter cannot run bfloat16 dots)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    "B, N, H, d, variant",
    [
        (4, 128, 12, 64, "default"),
        (4, 128, 12, 64, "two_pass"),
        (4, 256, 12, 64, "single_pass"),
        (3, 512, 12, 64, "default"),
        (2, 1024, 16, 128, "default"),
        (1, 4096, 4, 64, "default"),
        (8, 200, 6, 96, "default"),
        (2, 256, 12, 32, "default"),
    ],
)
def test_gpu_shapes(B, N, H, d, variant, dtype):
    q, k, v = make_qkv(B, N, H, d, dtype, "fused", seed=N)
    mask = make_mask(B, N, "mixed", seed=N)
    check_against_reference(q, k, v, mask, True, config_for(variant, B, N, H, d, dtype))
