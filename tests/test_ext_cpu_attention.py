"""The extension's fused CPU attention with significance against the references.

Error rule (as for the Triton kernels): the fused kernel's error against a float64 computation may be at
most twice the fp32 reference's own error on the same inputs, plus a small floor. Outputs are checked
after the allocator was filled with NaN, so an element the kernel never writes fails.
"""

from __future__ import annotations

import pytest
import torch

from powerbert_kernels import ops
from powerbert_kernels.ops import attention_with_significance_ref

FLOOR = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}


pytestmark = pytest.mark.usefixtures("require_extension")


def make_mask(B: int, N: int, padding: str, g: torch.Generator) -> torch.Tensor:
    """(B, N) bool. none, right, left, cls_only (one real token then padding), mixed (rows cycle through
    right / left / cls_only / none)."""
    kinds = ["right", "left", "cls_only", "none"] if padding == "mixed" else [padding]
    mask = torch.zeros(B, N, dtype=torch.bool)
    for b in range(B):
        kind = kinds[b % len(kinds)]
        real = N if kind == "none" else 1 if kind == "cls_only" else int(torch.randint(1, N + 1, (1,), generator=g))
        if kind == "left":
            mask[b, N - real :] = True
        else:
            mask[b, :real] = True
    return mask


def make_qkv(B: int, N: int, H: int, d: int, dtype: torch.dtype, layout: str, g: torch.Generator):
    """``fused``: views of one (B, N, 3*H*d) projection output, as a model makes them; ``head_major``:
    transposed views of (B, H, N, d) tensors; ``broadcast``: rows of stride 0 (copied by the kernel)."""
    if layout == "fused":
        x = torch.randn(B, N, 3 * H * d, generator=g).to(dtype)
        return tuple(t.view(B, N, H, d) for t in x.split(H * d, dim=-1))
    if layout == "head_major":
        return tuple(torch.randn(B, H, N, d, generator=g).to(dtype).transpose(1, 2) for _ in range(3))
    return tuple(torch.randn(B, 1, H, d, generator=g).to(dtype).expand(B, N, H, d) for _ in range(3))


def float64_attention(q, k, v, mask, scale, exclude_self):
    """The exact answer (float64) for the given inputs."""
    B, N, H, d = q.shape
    qt, kt, vt = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = (qt @ kt.transpose(-1, -2)) * scale
    scores = scores + torch.zeros(B, 1, 1, N, dtype=torch.float64).masked_fill(
        ~mask[:, None, None, :], torch.finfo(torch.float32).min
    )
    probs = torch.softmax(scores, dim=-1)
    out = (probs @ vt).transpose(1, 2).reshape(B, N, H * d)
    votes = probs * mask[:, None, :, None].double()
    if exclude_self:
        votes = votes * (1 - torch.eye(N, dtype=torch.float64))
    return out, votes.sum(dim=(1, 2))


def fused(q, k, v, mask, scale, exclude_self):
    B, N, H, d = q.shape
    # Poison the allocator with NaN in the sizes the kernel is about to allocate.
    torch.full((B * N * H * d + B * N,), float("nan"), dtype=torch.float32)
    return torch.ops.powerbert.attention_significance_cpu(q, k, v, mask, scale, exclude_self)


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


CASES = [
    # B, N, H, d, dtype, padding, exclude_self, layout
    (1, 1, 1, 8, torch.float32, "none", False, "fused"),
    (3, 2, 3, 64, torch.float16, "right", True, "fused"),
    (4, 7, 12, 5, torch.float32, "mixed", True, "head_major"),
    (2, 63, 3, 64, torch.bfloat16, "cls_only", False, "fused"),
    (1, 64, 12, 64, torch.float32, "none", True, "head_major"),
    (3, 65, 1, 32, torch.float16, "left", False, "fused"),
    (4, 127, 3, 32, torch.float32, "mixed", True, "fused"),
    (2, 129, 2, 16, torch.bfloat16, "mixed", True, "head_major"),
    (2, 257, 3, 64, torch.float32, "right", False, "fused"),
    (2, 300, 2, 24, torch.float16, "mixed", True, "fused"),
    (3, 33, 2, 8, torch.float32, "mixed", False, "broadcast"),
    (1, 1100, 1, 16, torch.float32, "left", True, "fused"),
]


@pytest.mark.parametrize(
    "B, N, H, d, dtype, padding, exclude_self, layout",
    CASES,
    ids=[f"B{c[0]}-N{c[1]}-H{c[2]}-d{c[3]}-{str(c[4])[6:]}-{c[5]}-{'excl-' * c[6]}{c[7]}" for c in CASES],
)
def test_matches_reference_within_twice_its_error(B, N, H, d, dtype, padding, exclude_self, layout):
    g = torch.Generator().manual_seed(N * 31 + d)
    q, k, v = make_qkv(B, N, H, d, dtype, layout, g)
    mask = make_mask(B, N, padding, g)
    scale = d**-0.5 * 1.3  # not a power of two, so scaling before or after the product differs
    out, sig = fused(q, k, v, mask, scale, exclude_self)
    ref_out, ref_sig = attention_with_significance_ref(q, k, v, mask, scale, exclude_self)
    exact_out, exact_sig = float64_attention(q, k, v, mask, scale, exclude_self)
    assert out.dtype == dtype and out.shape == (B, N, H * d)
    assert sig.dtype == torch.float32 and sig.shape == (B, N)
    assert torch.isfinite(out).all() and torch.isfinite(sig).all()
    floor = FLOOR[dtype]
    out_tol = 2 * err(ref_out, exact_out) + floor * max(1.0, exact_out.abs().max().item())
    sig_tol = 2 * err(ref_sig, exact_sig) + FLOOR[torch.float32] * max(1.0, exact_sig.abs().max().item())
    assert err(out, exact_out) <= out_tol, (err(out, exact_out), out_tol)
    assert err(sig, exact_sig) <= sig_tol, (err(sig, exact_sig), sig_tol)
    # Padding receives exactly no attention from real rows, and only real rows vote.
    assert (sig[~mask] == 0).all()


def test_rows_of_only_cls_and_padding():
    g = torch.Generator().manual_seed(0)
    q, k, v = make_qkv(2, 40, 3, 16, torch.float32, "fused", g)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[:, 0] = True
    out, sig = fused(q, k, v, mask, 0.25, False)
    # Every row (padded ones too) attends only to the CLS key, so every output row is CLS's value row.
    torch.testing.assert_close(out, v[:, :1].reshape(2, 1, 48).expand(2, 40, 48), atol=0, rtol=0)
    # One voting row over three heads, probability 1 on CLS.
    assert sig[:, 0].tolist() == [3.0, 3.0] and (sig[:, 1:] == 0).all()
    _, sig_excl = fused(q, k, v, mask, 0.25, True)
    assert (sig_excl == 0).all()


def test_rows_without_real_tokens_attend_uniformly_and_do_not_vote():
    g = torch.Generator().manual_seed(1)
    q, k, v = make_qkv(2, 9, 2, 8, torch.float32, "fused", g)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1] = False
    out, sig = fused(q, k, v, mask, 0.3, False)
    mean_v = v[1].mean(dim=0).reshape(16)
    torch.testing.assert_close(out[1], mean_v.expand(9, 16), atol=1e-6, rtol=1e-6)
    assert (sig[1] == 0).all()


def test_results_do_not_depend_on_the_batch_or_the_threads():
    g = torch.Generator().manual_seed(2)
    B, N, H, d = 5, 150, 4, 32
    q, k, v = make_qkv(B, N, H, d, torch.float32, "fused", g)
    mask = make_mask(B, N, "mixed", g)
    out, sig = fused(q, k, v, mask, 0.2, True)
    for b in (0, 3):
        one = [t[b : b + 1].clone() for t in (q, k, v)]
        out_b, sig_b = fused(*one, mask[b : b + 1].clone(), 0.2, True)
        assert torch.equal(out_b[0], out[b]) and torch.equal(sig_b[0], sig[b])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out_1, sig_1 = fused(q, k, v, mask, 0.2, True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out_1, out) and torch.equal(sig_1, sig)


def test_public_op_picks_it_on_the_cpu_and_matches_the_torch_backend():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        call = ops.AttentionInputs(torch.device("cpu"), dtype, batch=2, seq_len=50, heads=3, head_dim=16)
        assert ops.resolve("attention_with_significance", call) == "ext"
        assert ops.explain("attention_with_significance", call)["ext"] == []
    g = torch.Generator().manual_seed(3)
    q, k, v = make_qkv(2, 50, 3, 16, torch.bfloat16, "fused", g)
    mask = make_mask(2, 50, "right", g)
    out, sig = ops.attention_with_significance(q, k, v, mask, exclude_self=True)
    ref_out, ref_sig = ops.attention_with_significance(q, k, v, mask, exclude_self=True, backend="torch")
    torch.testing.assert_close(out, ref_out, atol=1.6e-2, rtol=1.6e-2)
    torch.testing.assert_close(sig, ref_sig, atol=2e-5, rtol=2e-5)


def test_an_extension_built_from_older_sources_falls_back_to_the_reference(monkeypatch):
    from powerbert_kernels.ext import backend

    monkeypatch.setattr(backend, "has_cpu_attention", lambda: False)
    call = ops.AttentionInputs(torch.device("cpu"), torch.float32, batch=2, seq_len=8, heads=2, head_dim=4)
    assert ops.resolve("attention_with_significance", call) == "torch"
    assert ops.explain("attention_with_significance", call)["ext"] == [backend.STALE_BUILD_REASON]
    with pytest.raises(ops.BackendUnavailableError, match="rebuild it"):
        ops.resolve("attention_with_significance", call, backend="ext")


def test_public_op_gradient_through_the_ext_backend():
    g = torch.Generator().manual_seed(4)
    q, k, v = (t.clone().requires_grad_() for t in make_qkv(2, 12, 2, 8, torch.float32, "head_major", g))
    mask = make_mask(2, 12, "left", g)
    out, _ = ops.attention_with_significance(q, k, v, mask, backend="ext")
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref_out, _ = ops.attention_with_significance(q, k, v, mask, backend="torch")
    ref_out.square().sum().backward()
    for got, t in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(got, t.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(mask=torch.ones(2, 6, dtype=torch.long)), "mask must be a bool tensor"),
        (dict(mask=torch.ones(2, 5, dtype=torch.bool)), r"mask must have shape \(B, N\)"),
        (dict(k=torch.zeros(2, 6, 2, 4, dtype=torch.float16)), "k must have the dtype of q"),
        (dict(v=torch.zeros(2, 6, 2, 5)), "v must have the shape of q"),
        (dict(q=torch.zeros(2, 6, 2, 8)[..., ::2]), "q must be contiguous in its last dimension"),
        (dict(q=torch.zeros(2, 6, 8)), r"q must have shape \(B, N, H, d\)"),
        (dict(scale=0.0), "scale must be positive"),
    ],
)
def test_bad_input_is_a_clear_error(change, match):
    args = dict(
        q=torch.zeros(2, 6, 2, 4),
        k=torch.zeros(2, 6, 2, 4),
        v=torch.zeros(2, 6, 2, 4),
        mask=torch.ones(2, 6, dtype=torch.bool),
        scale=0.5,
        exclude_self=False,
    )
    args.update(change)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.powerbert.attention_significance_cpu(*args.values())
