"""Triton kernels of ``select_gather``: PoWER-BERT's extract step without a sort.

Semantics are those of :func:`~powerbert_kernels.ops.select_gather.select_gather_ref` (imported here as
``reference``; the module docstring of :mod:`powerbert_kernels.ops.select_gather` states the rule).

Each position gets one int64 sort key that encodes the whole rule, so that "j beats i" is a single
comparison ``key[j] > key[i]``::

    bits 52..53  class: 2 = CLS (the row's first real position, or 0), 1 = real token, 0 = padding
    bits 20..51  significance as an order-preserving unsigned integer (0 for padding: by position only)
    bits  0..19  (2**20 - 1) - position, so that ties go to the lower position

The keys of a row are distinct, so the order is strict and total: position ``i`` has rank
``#{j : key[j] > key[i]}`` and exactly ``keep`` positions have rank < keep. Output order is kept real
tokens by position, then kept padding by position (slot 0 is then always CLS). Every real token beats
every padding position, so exactly ``min(keep, real tokens)`` real ones are kept, and the slot of a kept
position is a running prefix count: kept real tokens before it, or that total plus the kept padding
before it. Two launches:

1. select, one program per row: rank by blocked all-pairs comparison (N^2 integer compares, trivial next
   to the attention that produced the scores), then slots by prefix sums carried across blocks; writes
   the kept indices and gathers the mask.
2. gather, one program per (block of kept rows, batch, block of features): a pure copy of the kept hidden
   rows, tiled so that many programs keep the memory system busy.

Significance ordering follows ``torch.sort``: -0.0 equals 0.0, and NaN sorts above every number.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops.select_gather import select_gather_ref as reference  # noqa: F401  (the semantics)
from ._common import MAX_SEQ_LEN, KernelLaunch, cuda_device_guard

__all__ = ["MAX_SEQ_LEN", "reference", "select_gather_launches", "select_gather_triton"]


@triton.jit
def _sort_keys(SIG, MASK, row, pos, N, cls_pos):
    """int64 keys of positions ``pos`` of row ``row`` (-1 past the end: never beats anything)."""
    ok = pos < N
    real = tl.load(MASK + row * N + pos, mask=ok, other=0) != 0
    sig = tl.load(SIG + row * N + pos, mask=ok, other=0.0)
    bits = sig.to(tl.int32, bitcast=True)
    # Canonicalise what torch.sort treats as equal, on the bits (immune to floating-point folding):
    # -0.0 becomes +0.0, and every NaN one positive NaN, which orders above +inf below.
    magnitude = bits & 0x7FFFFFFF
    bits = tl.where(magnitude == 0, 0, bits)
    bits = tl.where(magnitude > 0x7F800000, 0x7FC00000, bits)
    # IEEE floats order like sign-magnitude integers: flipping the magnitude bits of negatives makes the
    # signed integer order equal the float order; +2**31 then makes it unsigned.
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64) + 2147483648
    ordered = tl.where(real, ordered, 0)
    cls = tl.where(pos == cls_pos, 2, tl.where(real, 1, 0)).to(tl.int64)
    key = (cls << 52) | (ordered << 20) | (1048575 - pos).to(tl.int64)
    return tl.where(ok, key, -1), real


@triton.jit
def _select_kernel(
    SIG,
    MASK,
    INDICES,
    MASK_OUT,
    N,
    KEEP,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs_i = tl.arange(0, BLOCK_I)
    offs_j = tl.arange(0, BLOCK_J)

    first = tl.zeros([BLOCK_J], tl.int32) + N
    n_real = tl.zeros([BLOCK_J], tl.int32)
    for start in range(0, N, BLOCK_J):
        pos = start + offs_j
        real = tl.load(MASK + row * N + pos, mask=pos < N, other=0) != 0
        first = tl.minimum(first, tl.where(real, pos, N))
        n_real += real.to(tl.int32)
    cls_pos = tl.min(first, 0)
    cls_pos = tl.where(cls_pos < N, cls_pos, 0)
    kept_real_total = tl.minimum(tl.sum(n_real, 0), KEEP)

    real_before = tl.zeros([1], tl.int32)
    pad_before = tl.zeros([1], tl.int32)
    for start_i in range(0, N, BLOCK_I):
        pos_i = start_i + offs_i
        key_i, real_i = _sort_keys(SIG, MASK, row, pos_i, N, cls_pos)
        rank = tl.zeros([BLOCK_I], tl.int32)
        for start_j in range(0, N, BLOCK_J):
            key_j, _ = _sort_keys(SIG, MASK, row, start_j + offs_j, N, cls_pos)
            rank += tl.sum((key_j[None, :] > key_i[:, None]).to(tl.int32), 1)
        kept = (rank < KEEP) & (pos_i < N)
        kept_real = (kept & real_i).to(tl.int32)
        kept_pad = (kept & ~real_i).to(tl.int32)
        slot = tl.where(
            real_i,
            real_before + tl.cumsum(kept_real, 0) - kept_real,
            kept_real_total + pad_before + tl.cumsum(kept_pad, 0) - kept_pad,
        )
        tl.store(INDICES + row * KEEP + slot, pos_i.to(tl.int64), mask=kept)
        tl.store(MASK_OUT + row * KEEP + slot, real_i.to(tl.uint8), mask=kept)
        real_before += tl.sum(kept_real, 0)
        pad_before += tl.sum(kept_pad, 0)


@triton.jit
def _gather_kernel(
    HIDDEN,
    INDICES,
    OUT,
    stride_hb,
    stride_hn,
    KEEP,
    D,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_r = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    pid_d = tl.program_id(2)
    slots = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    slot_ok = slots < KEEP
    ok = slot_ok[:, None] & (cols < D)[None, :]
    src = tl.load(INDICES + row * KEEP + slots, mask=slot_ok, other=0)
    x = tl.load(HIDDEN + row * stride_hb + src[:, None] * stride_hn + cols[None, :], mask=ok)
    tl.store(OUT + (row * KEEP + slots[:, None]) * D + cols[None, :], x, mask=ok)


def _select_tiles(N: int) -> tuple[int, int, int]:
    # A 32 x 128 block of comparisons per step (int64 keys): 16 per thread over 8 warps.
    n_pad = max(16, triton.next_power_of_2(N))
    block_i, block_j = min(32, n_pad), min(128, n_pad)
    return block_i, block_j, 4 if block_i * block_j <= 2048 else 8


def _gather_tiles(D: int, elem: int) -> tuple[int, int]:
    # 4 KiB per program (two 16-byte vectors per thread over 4 warps): about 40 registers, so many
    # programs stay resident and keep enough bytes in flight; bigger tiles make the compiler hold
    # every load in registers before the stores (32 rows of 256 halves: ~200 registers). A power of
    # two that divides D (768 -> 256 for fp16) avoids masked-off lanes in the last column block.
    cap = 512 // elem
    divisor = D & -D
    block_d = min(divisor, cap) if divisor >= 64 else min(triton.next_power_of_2(D), cap)
    return max(1, (4096 // elem) // block_d), block_d


def select_gather_launches(
    batch: int, seq_len: int, hidden_size: int, keep: int, dtype: torch.dtype
) -> tuple[KernelLaunch, KernelLaunch]:
    """The select and the gather launch of one call on hidden (B, N, D) of ``dtype``, ``keep`` kept."""
    block_i, block_j, select_warps = _select_tiles(seq_len)
    block_r, block_d = _gather_tiles(hidden_size, torch.finfo(dtype).bits // 8)
    return (
        KernelLaunch("select", _select_kernel, (batch,), dict(BLOCK_I=block_i, BLOCK_J=block_j), select_warps),
        KernelLaunch(
            "gather",
            _gather_kernel,
            (triton.cdiv(keep, block_r), batch, triton.cdiv(hidden_size, block_d)),
            dict(BLOCK_R=block_r, BLOCK_D=block_d),
            4,
        ),
    )


def select_gather_triton(
    hidden: torch.Tensor,
    significance: torch.Tensor,
    mask: torch.Tensor,
    keep: int,
    *,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton implementation of ``powerbert::select_gather`` (arguments already checked).

    Args:
        hidden: (B, N, D) any dtype; any strides (copied once if the last one is not 1).
        significance: (B, N) float.
        mask: (B, N) bool, True = real token.
        keep: vectors kept per row, 1 <= keep <= N.
        out: optional contiguous buffers (hidden_kept, mask_kept, indices) to write into (tests pass
            poisoned buffers so that any element left unwritten shows).

    Returns:
        hidden_kept: (B, keep, D); mask_kept: (B, keep) bool; indices: (B, keep) int64 (kept real tokens ascending,
        then kept padding ascending).
    """
    B, N, D = hidden.shape
    if N > MAX_SEQ_LEN:
        raise ValueError(f"hidden: sequence length {N} exceeds the {MAX_SEQ_LEN} the Triton kernel can order")
    if hidden.stride(-1) != 1:
        hidden = hidden.contiguous()
    if out is None:
        out = (
            torch.empty(B, keep, D, dtype=hidden.dtype, device=hidden.device),
            torch.empty(B, keep, dtype=torch.bool, device=hidden.device),
            torch.empty(B, keep, dtype=torch.int64, device=hidden.device),
        )
    hidden_kept, mask_kept, indices = out
    for name, t, shape, dtype in (
        ("hidden_kept", hidden_kept, (B, keep, D), hidden.dtype),
        ("mask_kept", mask_kept, (B, keep), torch.bool),
        ("indices", indices, (B, keep), torch.int64),
    ):
        if tuple(t.shape) != shape or t.dtype != dtype or t.device != hidden.device or not t.is_contiguous():
            raise ValueError(
                f"out: {name} must be a contiguous {dtype} tensor of shape {shape} on "
                f"{hidden.device}, got {t.dtype} {tuple(t.shape)} on {t.device}"
            )
    sig = significance.to(torch.float32).contiguous()
    mask_u8 = mask.contiguous().view(torch.uint8)

    select, gather = select_gather_launches(B, N, D, keep, hidden.dtype)
    with cuda_device_guard(hidden.device):
        select.launch(sig, mask_u8, indices, mask_kept.view(torch.uint8), N, keep)
        gather.launch(hidden, indices, hidden_kept, hidden.stride(0), hidden.stride(1), keep, D)
    return hidden_kept, mask_kept, indices


def gather_bytes(batch: int, keep: int, hidden_size: int, element_size: int) -> int:
    """Bytes select-gather must move at least: read and write every kept hidden row."""
    return 2 * batch * keep * hidden_size * element_size
