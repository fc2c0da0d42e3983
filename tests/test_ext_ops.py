"""The compiled extension's operators against the PyTorch references.

C++ CPU kernels here; the same checks on CUDA (marked ``gpu``) run where a GPU is present. Without a
compiler the extension may be missing and these tests skip, except under CI (CI=true), where a missing
extension is a failure so that a broken build cannot hide.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from powerbert_kernels import ext, ops
from powerbert_kernels.ops import select_gather_ref

NS = (1, 2, 7, 63, 64, 65, 127, 257)
HEADS = (1, 3, 12)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PADDINGS = ("none", "right", "left", "cls_only")
CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
DEVICES = ("cpu", pytest.param("cuda", marks=[pytest.mark.gpu, gpu]))


pytestmark = pytest.mark.usefixtures("require_extension")


def make_mask(B: int, N: int, padding: str, g: torch.Generator) -> torch.Tensor:
    """(B, N) bool with at least one real token per row; ``cls_only``: the last row is CLS + padding."""
    mask = torch.ones(B, N, dtype=torch.bool)
    if padding == "none":
        return mask
    lengths = torch.randint(1, N + 1, (B,), generator=g)
    for b, length in enumerate(lengths.tolist()):
        mask[b] = False
        if padding == "left":
            mask[b, N - length :] = True
        else:
            mask[b, :length] = True
    if padding == "cls_only":
        mask[-1] = False
        mask[-1, 0] = True
    return mask


def poison_allocator(numel: int, device: str, dtype: torch.dtype = torch.float32) -> None:
    """Fill and free a block of the size an op is about to allocate, so an output element the op
    forgets to write shows up as NaN rather than as a lucky zero."""
    torch.full((max(numel, 1),), float("nan"), dtype=dtype, device=device)


def significance_expected(probs: torch.Tensor, mask: torch.Tensor, q_offset: int, exclude_self: bool) -> torch.Tensor:
    """float64 reference: sum over heads and voting rows, without the diagonal when exclude_self."""
    B, H, n_q, N = probs.shape
    p = probs.double().clone()
    if exclude_self:
        torch.diagonal(p, offset=q_offset, dim1=-2, dim2=-1).zero_()
    votes = mask[:, q_offset : q_offset + n_q].double()
    return (p * votes[:, None, :, None]).sum(dim=(1, 2))


def random_probs(B: int, H: int, n_q: int, N: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    # Softmax rows of random scores: positive, never zero, summing to about 1 like real attention.
    return torch.randn(B, H, n_q, N, generator=g).softmax(dim=-1).to(dtype)


SIG_CASES = [
    (N, H, dtype, (1, 3)[i % 2], PADDINGS[i % 4], bool(i % 3 == 0))
    for i, (N, H, dtype) in enumerate(itertools.product(NS, HEADS, DTYPES))
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N,H,dtype,B,padding,exclude_self", SIG_CASES)
def test_significance_from_probs_matches_reference(device, N, H, dtype, B, padding, exclude_self):
    g = torch.Generator().manual_seed(N * 100 + H)
    probs = random_probs(B, H, N, N, dtype, g)
    mask = make_mask(B, N, padding, g)
    poison_allocator(B * N, device)
    got = ext.significance_from_probs(probs.to(device), mask.to(device), 0, exclude_self)
    assert got.dtype == torch.float32 and got.shape == (B, N) and got.device.type == device
    # The op widens each stored value exactly and accumulates in float32, so the tolerance is float32's
    # whatever the input dtype (the reference sums the very same values in float64).
    torch.testing.assert_close(
        got.cpu().double(), significance_expected(probs, mask, 0, exclude_self), rtol=2e-6, atol=2e-6
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("N,block", [(65, 16), (127, 1), (257, 64), (7, 3)])
def test_significance_blocks_add_up_to_the_whole(device, N, block, exclude_self):
    # A caller walks the probabilities block by block of query rows with q_offset; the blocks' sums
    # must add up to the significance of the whole matrix.
    g = torch.Generator().manual_seed(N)
    B, H = 3, 3
    probs = random_probs(B, H, N, N, torch.float32, g)
    mask = make_mask(B, N, "left", g)
    total = torch.zeros(B, N, dtype=torch.float64)
    for start in range(0, N, block):
        rows = probs[:, :, start : start + block]
        got = ext.significance_from_probs(rows.to(device), mask.to(device), start, exclude_self).cpu()
        torch.testing.assert_close(
            got.double(), significance_expected(rows, mask, start, exclude_self), rtol=2e-6, atol=2e-6
        )
        total += got.double()
    torch.testing.assert_close(total, significance_expected(probs, mask, 0, exclude_self), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_significance_strided_probs(device, dtype):
    # Batch, head and row strides are free (a slice of a larger buffer, heads and rows swapped); only
    # the last dimension must be contiguous. An odd element offset also defeats vectorised loads.
    g = torch.Generator().manual_seed(5)
    B, H, n_q, N = 2, 5, 33, 40
    base = torch.randn(B, n_q, H, N + 3, generator=g).softmax(-1).to(dtype)
    probs = base[..., 1 : N + 1].transpose(1, 2)
    assert not probs.is_contiguous() and probs.stride(-1) == 1
    mask_base = make_mask(B, 2 * N, "right", g)
    mask = mask_base[:, ::2]
    got = ext.significance_from_probs(probs.to(device), mask.to(device), 7, True).cpu()
    torch.testing.assert_close(got.double(), significance_expected(probs, mask, 7, True), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_significance_empty_and_degenerate_shapes(device):
    mask = torch.ones(2, 5, dtype=torch.bool, device=device)
    zero_rows = ext.significance_from_probs(torch.rand(2, 3, 0, 5, device=device), mask, 5)
    assert torch.equal(zero_rows.cpu(), torch.zeros(2, 5))
    no_batch = ext.significance_from_probs(torch.rand(0, 3, 5, 5, device=device), mask[:0], 0)
    assert no_batch.shape == (0, 5)


def significance_like_attention(mask: torch.Tensor, g: torch.Generator, kind: str = "distinct") -> torch.Tensor:
    """(B, N) float32 significance as attention produces it: positive at real tokens, 0 at padding.
    ``ties``: few distinct values, so the tie-break by position matters. ``noisy_padding``: padding gets
    values too (the rule must still rank padding by position only)."""
    B, N = mask.shape
    values = torch.rand(B, N, generator=g) + 0.01
    if kind == "ties":
        values = torch.randint(1, 4, (B, N), generator=g).float()
    if kind == "noisy_padding":
        return torch.randn(B, N, generator=g)
    return values.masked_fill(~mask, 0.0)


def assert_select_gather_equal(got, expected) -> None:
    for name, a, b in zip(("hidden_kept", "mask_kept", "indices"), got, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a.cpu(), b.cpu()), name


SELECT_CASES = [
    (N, D, dtype, B, padding)
    for N, (D, dtype, B, padding) in itertools.product(
        NS,
        [
            (7, torch.float32, 1, "right"),
            (16, torch.float16, 4, "left"),
            (33, torch.bfloat16, 3, "cls_only"),
            (768, torch.float32, 2, "none"),
            (5, torch.float16, 5, "right"),
        ],
    )
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N,D,dtype,B,padding", SELECT_CASES)
def test_select_gather_matches_reference(device, N, D, dtype, B, padding):
    g = torch.Generator().manual_seed(N * 7 + D)
    hidden = torch.randn(B, N, D, generator=g).to(dtype)
    mask = make_mask(B, N, padding, g)
    for kind in ("distinct", "ties", "noisy_padding"):
        sig = significance_like_attention(mask, g, kind)
        for keep in sorted({1, 2, max(1, N // 3), max(1, N - 1), N} & set(range(1, N + 1))):
            poison_allocator(B * keep * D, device, dtype)
            got = ext.select_gather_ext(hidden.to(device), sig.to(device), mask.to(device), keep)
            assert_select_gather_equal(got, select_gather_ref(hidden, sig, mask, keep))


@pytest.mark.parametrize("device", DEVICES)
def test_select_gather_rows_without_real_tokens_and_long_rows(device):
    # A row with no real token keeps position 0 first (its "CLS"), then padding by position; N beyond
    # one GPU block of positions exercises the chunked ranks and slots.
    g = torch.Generator().manual_seed(11)
    B, N, D = 3, 1000, 9
    hidden = torch.randn(B, N, D, generator=g)
    mask = make_mask(B, N, "left", g)
    mask[1] = False
    sig = significance_like_attention(mask, g)
    for keep in (1, 300, 999, 1000):
        got = ext.select_gather_ext(hidden.to(device), sig.to(device), mask.to(device), keep)
        assert_select_gather_equal(got, select_gather_ref(hidden, sig, mask, keep))
        assert got[2][1].tolist() == list(range(keep))


@pytest.mark.parametrize("device", DEVICES)
def test_select_gather_signed_zeros_and_nans_order_like_torch_sort(device):
    # torch.sort(descending) puts NaN first and treats -0.0 as equal to 0.0 (ties by position).
    mask = torch.ones(1, 8, dtype=torch.bool)
    sig = torch.tensor([[5.0, 0.0, -0.0, float("nan"), 1.0, -0.0, float("nan"), -1.0]])
    hidden = torch.arange(8.0).view(1, 8, 1)
    for keep in range(1, 9):
        got = ext.select_gather_ext(hidden.to(device), sig.to(device), mask.to(device), keep)
        assert_select_gather_equal(got, select_gather_ref(hidden, sig, mask, keep))


@pytest.mark.parametrize("device", DEVICES)
def test_select_gather_padding_is_taken_by_position_and_placed_last(device):
    # The selection rule orders padding by position alone (padding carries no significance); a short
    # left-padded row comes out right-padded with its CLS vector in slot 0.
    mask = torch.tensor([[False, False, False, True, True, True]])
    sig = torch.tensor([[0.7, -1.0, 3.0, 0.1, 0.9, 0.5]])
    hidden = torch.arange(6.0).view(1, 6, 1)
    got = ext.select_gather_ext(hidden.to(device), sig.to(device), mask.to(device), 5)
    assert got[2].tolist() == [[3, 4, 5, 0, 1]]
    assert got[1].tolist() == [[True, True, True, False, False]]
    assert_select_gather_equal(got, select_gather_ref(hidden, sig, mask, 5))


@pytest.mark.parametrize("device", DEVICES)
def test_select_gather_strided_hidden(device):
    # Batch and position strides are free (a view of a wider buffer); odd offsets force narrow copies.
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 2 * 50, 13, generator=g, dtype=torch.float32)
    hidden = base[:, 1::2, 1:12]
    mask = make_mask(4, 50, "right", g)
    sig = significance_like_attention(mask, g)
    got = ext.select_gather_ext(hidden.to(device), sig.to(device), mask.to(device), 20)
    assert_select_gather_equal(got, select_gather_ref(hidden, sig, mask, 20))


# --- the public ops with backend "ext" -------------------------------------------------------------

ATTENTION_TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "N,H,d,dtype,padding,exclude_self",
    [
        (1, 1, 8, torch.float32, "none", False),
        (7, 3, 5, torch.float16, "left", True),
        (64, 12, 16, torch.bfloat16, "right", False),
        (65, 3, 7, torch.float32, "cls_only", True),
        (257, 2, 32, torch.float32, "right", True),
    ],
)
def test_attention_with_significance_ext_matches_reference(device, N, H, d, dtype, padding, exclude_self):
    g = torch.Generator().manual_seed(N + d)
    B = 3
    q, k, v = (torch.randn(B, N, H, d, generator=g).to(dtype).to(device) for _ in range(3))
    mask = make_mask(B, N, padding, g).to(device)
    out, sig = ops.attention_with_significance(q, k, v, mask, exclude_self=exclude_self, backend="ext")
    ref_out, ref_sig = ops.attention_with_significance_ref(q, k, v, mask, exclude_self=exclude_self)
    # Both compute the scores and outputs in float32 from the same inputs; the output tolerance is one
    # rounding of the output dtype, the significance's that of float32 sums.
    atol, rtol = ATTENTION_TOL[dtype]
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(sig, ref_sig, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_select_gather_public_op_with_ext_backend(device, dtype):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 65, 24, generator=g).to(dtype)
    mask = make_mask(3, 65, "left", g)
    sig = significance_like_attention(mask, g, "ties")
    got = ops.select_gather(hidden.to(device), sig.to(device), mask.to(device), 30, backend="ext")
    assert_select_gather_equal(got, select_gather_ref(hidden, sig, mask, 30))


def test_cpu_dispatch_picks_ext_for_both_ops():
    cpu = torch.device("cpu")
    gather = ops.SelectGatherInputs(cpu, torch.float32, batch=2, seq_len=16, hidden_size=8, keep=4)
    attention = ops.AttentionInputs(cpu, torch.float32, batch=2, seq_len=16, heads=2, head_dim=8)
    assert ops.resolve("select_gather", gather) == "ext"
    assert ops.resolve("attention_with_significance", attention) == "ext"
    assert ops.explain("attention_with_significance", attention)["ext"] == []


def test_available_backends_lists_ext():
    assert "ext" in ops.available_backends()
    assert "ext: available" in ops.backend_report().splitlines()[1]
    assert ext.build_info()["cpu"] is True


# --- opcheck ---------------------------------------------------------------------------------------


def test_opcheck_significance_from_probs():
    g = torch.Generator().manual_seed(0)
    mask = make_mask(2, 9, "right", g)
    for exclude_self in (False, True):
        probs = random_probs(2, 3, 4, 9, torch.float32, g).requires_grad_()
        torch.library.opcheck(torch.ops.powerbert.significance_from_probs.default, (probs, mask, 2, exclude_self))


def test_significance_from_probs_gradient():
    # The registered backward broadcasts the gradient over heads and voting rows, diagonal left out.
    g = torch.Generator().manual_seed(0)
    mask = make_mask(2, 6, "left", g)
    probs = random_probs(2, 2, 3, 6, torch.float32, g).requires_grad_()
    weights = torch.randn(2, 6, generator=g)
    (ext.significance_from_probs(probs, mask, 2, True) * weights).sum().backward()
    ref = probs.detach().clone().requires_grad_()
    (significance_expected(ref, mask, 2, True) * weights.double()).sum().backward()
    torch.testing.assert_close(probs.grad, ref.grad)


def test_opcheck_public_ops_with_ext_backend():
    g = torch.Generator().manual_seed(0)
    mask = make_mask(2, 10, "right", g)
    q, k, v = (torch.randn(2, 10, 3, 8, generator=g).requires_grad_() for _ in range(3))
    torch.library.opcheck(
        torch.ops.powerbert.attention_with_significance.default, (q, k, v, mask, 8**-0.5, True, "ext")
    )
    hidden = torch.randn(2, 10, 6, generator=g).requires_grad_()
    sig = significance_like_attention(mask, g)
    torch.library.opcheck(torch.ops.powerbert.select_gather.default, (hidden, sig, mask, 4, "ext"))


def test_select_gather_ext_gradient_scatters_back():
    g = torch.Generator().manual_seed(0)
    mask = make_mask(2, 8, "right", g)
    sig = significance_like_attention(mask, g)
    hidden = torch.randn(2, 8, 3, generator=g, requires_grad=True)
    kept, _, indices = ops.select_gather(hidden, sig, mask, 4, backend="ext")
    kept.sum().backward()
    expected = torch.zeros(2, 8, 3)
    expected.scatter_(1, indices[:, :, None].expand(-1, -1, 3), 1.0)
    assert torch.equal(hidden.grad, expected)


def test_compiled_model_of_the_ext_kernels_has_no_graph_break():
    g = torch.Generator().manual_seed(0)
    mask = make_mask(2, 12, "right", g)
    probs = random_probs(2, 2, 12, 12, torch.float32, g)
    hidden = torch.randn(2, 12, 4, generator=g)

    def step(probs, mask, hidden):
        sig = torch.ops.powerbert.significance_from_probs(probs, mask, 0, True)
        return ops.select_gather(hidden, sig, mask, 5, backend="ext")

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    assert_select_gather_equal(compiled(probs, mask, hidden), step(probs, mask, hidden))


# --- errors a user can act on ----------------------------------------------------------------------


def test_significance_bad_input_is_a_clear_error():
    probs = torch.rand(2, 3, 4, 5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    sig = ext.significance_from_probs
    with pytest.raises(RuntimeError, match=r"probs must have shape \(B, H, n_q, N\)"):
        sig(probs[0], mask)
    with pytest.raises(RuntimeError, match="probs must be float32, float16 or bfloat16"):
        sig(probs.double(), mask)
    with pytest.raises(RuntimeError, match=r"mask must have shape \(B, N\) = \(2, 5\)"):
        sig(probs, mask[:, :4])
    with pytest.raises(RuntimeError, match="mask must be a bool tensor"):
        sig(probs, mask.float())
    with pytest.raises(RuntimeError, match="contiguous in its last dimension"):
        sig(torch.rand(2, 3, 5, 4).transpose(-1, -2), mask, 0)
    with pytest.raises(RuntimeError, match=r"query rows \[q_offset, q_offset \+ n_q\) = \[2, 6\)"):
        sig(probs, mask, 2)
    with pytest.raises(RuntimeError, match="query rows"):
        sig(probs, mask, -1)


def test_select_gather_bad_input_is_a_clear_error():
    hidden = torch.rand(2, 5, 3)
    sig = torch.rand(2, 5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    sg = ext.select_gather_ext
    with pytest.raises(RuntimeError, match=r"hidden must have shape \(B, N, D\)"):
        sg(hidden[0], sig, mask, 2)
    with pytest.raises(RuntimeError, match="hidden must be float32, float16 or bfloat16"):
        sg(hidden.long(), sig, mask, 2)
    with pytest.raises(RuntimeError, match="hidden must be contiguous in its last dimension"):
        sg(torch.rand(2, 3, 5).transpose(1, 2), sig, mask, 2)
    with pytest.raises(RuntimeError, match="significance must be float32"):
        sg(hidden, sig.half(), mask, 2)
    with pytest.raises(RuntimeError, match=r"significance must have shape \(B, N\) = \(2, 5\)"):
        sg(hidden, sig[:, :3], mask, 2)
    with pytest.raises(RuntimeError, match="mask must be a bool tensor"):
        sg(hidden, sig, mask.int(), 2)
    for keep in (0, 6, -1):
        with pytest.raises(RuntimeError, match="keep must be between 1 and N = 5"):
            sg(hidden, sig, mask, keep)


@pytest.mark.gpu
@gpu
def test_cuda_inputs_on_different_devices_are_a_clear_error():
    probs = torch.rand(2, 3, 4, 5, device="cuda")
    with pytest.raises(RuntimeError, match="mask is on cpu but probs is on cuda"):
        ext.significance_from_probs(probs, torch.ones(2, 5, dtype=torch.bool), 0)
    hidden = torch.rand(2, 5, 3, device="cuda")
    with pytest.raises(RuntimeError, match="significance is on cpu but hidden is on cuda"):
        ext.select_gather_ext(hidden, torch.rand(2, 5), torch.ones(2, 5, dtype=torch.bool, device="cuda"), 2)


@pytest.mark.gpu
@gpu
def test_cuda_kernels_load_and_are_deterministic():
    assert ext.build_info()["cuda"], "built without CUDA kernels"
    assert ext._C.cuda_kernel_error(torch.cuda.current_device()) is None
    g = torch.Generator().manual_seed(0)
    # Few batch rows and many (head, row) pairs: the row-split path with its second reduction kernel.
    probs = random_probs(1, 12, 512, 512, torch.float32, g).cuda()
    mask = make_mask(1, 512, "right", g).cuda()
    first = ext.significance_from_probs(probs, mask, 0, True)
    for _ in range(3):
        assert torch.equal(ext.significance_from_probs(probs, mask, 0, True), first)
    torch.testing.assert_close(
        first.cpu().double(), significance_expected(probs.cpu(), mask.cpu(), 0, True), rtol=1e-5, atol=1e-5
    )
