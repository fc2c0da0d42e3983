"""Triton select-gather against the reference: indices, masks and kept vectors must match exactly.

Outputs are launched into poisoned buffers (NaN vectors, index -1, mask byte 2) so that anything the
kernels leave unwritten fails.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")  # the `triton` extra

import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st
from test_selection_rule import SETTINGS, assert_same_order, check_against_spec, positions, rows
from test_triton_attention import make_mask

from powerbert_kernels import ops
from powerbert_kernels.ops import SelectGatherInputs, select_gather_ref
from powerbert_kernels.triton._common import MAX_SEQ_LEN
from powerbert_kernels.triton.backend import TritonSelectGather
from powerbert_kernels.triton.select_gather import _sort_keys, select_gather_triton

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"


def make_significance(mask: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """(B, N) float32, 0 at padding (as attention produces it). ``distinct``: no two values equal;
    ``ties``: a handful of values, many equal (ties must go to the lower position)."""
    g = torch.Generator().manual_seed(seed)
    B, N = mask.shape
    if kind == "distinct":
        sig = torch.stack([torch.randperm(N, generator=g) for _ in range(B)]).float() / N + 0.5
        sig += 1e-3 * torch.rand(B, N, generator=g)
    else:
        sig = torch.randint(1, 4, (B, N), generator=g).float() / 4
    return sig.masked_fill(~mask, 0.0)


def poisoned(B: int, keep: int, D: int, dtype: torch.dtype):
    hidden_kept = torch.full((B, keep, D), float("nan"), dtype=dtype, device=DEVICE)
    mask_kept = torch.full((B, keep), 2, dtype=torch.uint8, device=DEVICE).view(torch.bool)
    indices = torch.full((B, keep), -1, dtype=torch.int64, device=DEVICE)
    return hidden_kept, mask_kept, indices


def check_against_reference(hidden, sig, mask, keep):
    B, N, D = hidden.shape
    out = poisoned(B, keep, D, hidden.dtype)
    got = select_gather_triton(hidden.to(DEVICE), sig.to(DEVICE), mask.to(DEVICE), keep, out=out)
    assert all(g is o for g, o in zip(got, out, strict=True))
    want = select_gather_ref(hidden, sig, mask, keep)
    hidden_kept, mask_kept, indices = (t.cpu() for t in got)
    assert torch.equal(indices, want[2]), (indices, want[2])
    assert torch.equal(mask_kept.view(torch.uint8), want[1].view(torch.uint8))
    assert torch.equal(hidden_kept, want[0])


CASES = [
    # B, N, D, keep, dtype, padding, significance
    (1, 1, 8, 1, torch.float32, "none", "distinct"),
    (3, 2, 5, 1, torch.float16, "right", "distinct"),
    (4, 7, 48, 4, torch.bfloat16, "mixed", "ties"),
    (2, 63, 384, 30, torch.float32, "left", "distinct"),
    (5, 64, 33, 64, torch.float16, "empty", "ties"),
    (4, 65, 768, 17, torch.float16, "cls_only", "distinct"),
    (6, 127, 64, 100, torch.bfloat16, "empty", "distinct"),
    (2, 257, 96, 129, torch.float32, "mixed", "ties"),
    (1, 257, 16, 3, torch.float16, "right", "ties"),
]


@pytest.mark.parametrize(
    "B, N, D, keep, dtype, padding, kind",
    CASES,
    ids=[f"B{c[0]}-N{c[1]}-D{c[2]}-keep{c[3]}-{str(c[4])[6:]}-{c[5]}-{c[6]}" for c in CASES],
)
def test_matches_reference(B, N, D, keep, dtype, padding, kind):
    g = torch.Generator().manual_seed(N)
    hidden = torch.randn(B, N, D, generator=g).to(dtype)
    mask = make_mask(B, N, padding, seed=N)
    check_against_reference(hidden, make_significance(mask, kind, seed=N), mask, keep)


def test_ties_go_to_the_lower_position():
    mask = torch.tensor([[True] * 8, [False, False] + [True] * 6])
    sig = torch.tensor([[9.0, 1.0, 2.0, 2.0, 1.0, 2.0, 0.5, 2.0], [0.0, 0.0, 0.1, 3.0, 3.0, 1.0, 3.0, 3.0]])
    hidden = torch.randn(2, 8, 4)
    _, _, indices = select_gather_triton(hidden, sig, mask, 4)
    # Row 0: CLS, then the 2.0s at 2, 3, 5 (not 7). Row 1 is left-padded: CLS is position 2 (its first
    # real token, despite its low score), then the 3.0s at 3, 4, 6 (not 7).
    assert indices.tolist() == [[0, 2, 3, 5], [2, 3, 4, 6]]
    check_against_reference(hidden, sig, mask, 4)


def test_signed_zeros_and_nans_order_like_torch_sort():
    mask = torch.ones(2, 9, dtype=torch.bool)
    sig = torch.tensor(
        [
            [0.0, -0.0, 0.0, float("nan"), -1.0, -0.0, float("inf"), float("-inf"), 1.0],
            [5.0, float("nan"), -0.0, float("nan"), 0.0, -0.0, -2.0, 0.0, -float("nan")],
        ]
    )
    hidden = torch.randn(2, 9, 3)
    for keep in (2, 4, 6):
        check_against_reference(hidden, sig, mask, keep)


def test_padding_is_kept_last_by_position_and_placed_after_real_tokens():
    # Rule 3 of the selection: padding only fills up rows with fewer than keep real tokens, lowest
    # position first, whatever score it carries; in the output it follows the real tokens, so a short
    # left-padded row comes out right-padded with CLS in slot 0.
    mask = torch.tensor([[True, True, False, False, False, False], [False, False, False, False, True, True]])
    sig = torch.tensor([[1.0, 0.5, 0.0, 0.9, 0.3, 0.0], [0.0, 0.9, 0.0, 0.3, 1.0, 2.0]])
    _, mask_kept, indices = select_gather_triton(torch.randn(2, 6, 2), sig, mask, 4)
    assert indices.tolist() == [[0, 1, 2, 3], [4, 5, 0, 1]]
    assert mask_kept.tolist() == [[True, True, False, False], [True, True, False, False]]


def test_non_contiguous_hidden():
    g = torch.Generator().manual_seed(0)
    mask = make_mask(3, 40, "mixed", seed=2)
    sig = make_significance(mask, "distinct", seed=2)
    wide = torch.randn(3, 40, 200, generator=g)
    check_against_reference(wide[:, :, 50:114], sig, mask, 13)  # unit last stride, row stride 200
    check_against_reference(torch.randn(3, 64, 40, generator=g).transpose(1, 2), sig, mask, 13)


def test_public_op_forced_triton(monkeypatch):
    monkeypatch.setenv("POWERBERT_BACKEND", "triton")
    mask = make_mask(3, 12, "mixed", seed=4)
    sig = make_significance(mask, "distinct", seed=4)
    hidden = torch.randn(3, 12, 16)
    got = ops.select_gather(hidden.to(DEVICE), sig.to(DEVICE), mask.to(DEVICE), 5)
    want = select_gather_ref(hidden, sig, mask, 5)
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want, strict=True))


def test_dispatch_facts():
    facts = SelectGatherInputs(DEVICE, torch.bfloat16, batch=2, seq_len=128, hidden_size=768, keep=64)
    assert TritonSelectGather.not_supported_reasons(facts) == []
    too_long = SelectGatherInputs(DEVICE, torch.float16, batch=1, seq_len=(1 << 20) + 1, hidden_size=8, keep=4)
    assert "sequence length 1048577 is longer than 1048576" in TritonSelectGather.not_supported_reasons(too_long)
    if ON_GPU:
        assert ops.resolve("select_gather", facts) == "triton"
    else:
        assert ops.explain("select_gather", facts)["triton"]
        assert ops.resolve("select_gather", facts) != "triton"


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("B, N, D, keep", [(128, 512, 768, 256), (4, 4096, 1024, 1000), (64, 128, 768, 1)])
def test_gpu_shapes(B, N, D, keep):
    mask = make_mask(B, N, "mixed", seed=N)
    hidden = torch.randn(B, N, D).half()
    check_against_reference(hidden, make_significance(mask, "ties", seed=N), mask, keep)


# --- the selection rule's specification (ops.preference_key) ---------------------------------------


def _triton_select(hidden, sig, mask, keep):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return [t.cpu() for t in select_gather_triton(hidden.to(device), sig.to(device), mask.to(device), keep)]


@settings(SETTINGS, max_examples=25)
@given(rows(max_n=20))
def test_triton_kernel_follows_the_spec(case):
    check_against_spec(_triton_select, *case)


@triton.jit
def _keys_kernel(SIG, MASK, POS, OUT, N, CLS_POS, COUNT, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    pos = tl.load(POS + offs, mask=offs < COUNT, other=0)
    key, _ = _sort_keys(SIG, MASK, 0, pos, N, CLS_POS)
    tl.store(OUT + offs, key, mask=offs < COUNT)


@pytest.fixture(scope="module")
def triton_keys():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sig_row = torch.zeros(MAX_SEQ_LEN, dtype=torch.float32, device=device)
    mask_row = torch.zeros(MAX_SEQ_LEN, dtype=torch.uint8, device=device)

    def keys(pos, sig, real, cls) -> list[int]:
        index = torch.tensor(pos, dtype=torch.int64, device=device)
        sig_row[index] = torch.tensor(sig, dtype=torch.float32, device=device)
        mask_row[index] = torch.tensor(real, dtype=torch.uint8, device=device)
        out = torch.empty(len(pos), dtype=torch.int64, device=device)
        _keys_kernel[(1,)](sig_row, mask_row, index.to(torch.int32), out, MAX_SEQ_LEN, cls, len(pos), BLOCK=8)
        return out.tolist()

    keys.max_n = MAX_SEQ_LEN
    return keys


@settings(SETTINGS, max_examples=40)
@given(data=st.data())
def test_triton_keys_follow_the_spec_up_to_the_largest_n(triton_keys, data):
    case = data.draw(positions(triton_keys.max_n))
    assert_same_order(triton_keys(*case), *case)
