"""Triton kernels of ``attention_with_significance``: fused attention that also sums each key's attention.

Semantics are those of :func:`~powerbert_kernels.ops.attention.attention_with_significance_ref` (imported
here as ``reference``): scores ``q . k * scale``; padded keys get the finite bias float32-min, so they get
exactly 0 probability in any row with a real key and a row without any real key attends uniformly (never
NaN); every query row gets an output, but only real rows vote in the significance; ``exclude_self`` leaves
each row's attention to itself out of its own column.

Two implementations, both deterministic (fixed reduction order, no atomics) and neither writing the
B x H x N x N probabilities:

* **two-pass** (any N). Pass 1 is flash attention: one program per (query block, batch x head) streams
  the key blocks with an online softmax and writes the output straight into the (B, N, H*d) layout plus
  each row's log2-sum-exp. Pass 2 has one program per (key block, batch): it loops over heads and query
  blocks, recomputes ``exp2(s - lse)`` for the real query rows and sums the columns in registers. Cost:
  one extra ``Q K^T`` and one extra exponential per score.
* **single-pass** (short N, the whole padded key range in one tile). One program per (query block,
  batch x head) computes the exact softmax of its rows at once, writes the output and the column sums
  of its block; a deterministic ``sum`` over the (head, query block) partials then gives the
  significance. It does one ``Q K^T`` and one exponential per score instead of two, at the price of
  keeping a BLOCK_M x N score tile in registers, hence the length limit.

Numerics: scores are accumulated in fp32 from fp16/bf16/fp32 inputs (fp32 inputs use IEEE fp32 dots,
not TF32, to match PyTorch's default fp32 matmul); the softmax works in base 2 with ``scale * log2(e)``
folded into one multiply; probabilities are rounded to the input dtype only for the ``P V`` product, as
flash attention does. Head dims are padded to a power of two (at least 16, the smallest ``tl.dot`` size)
with masked loads, so any d up to 256 works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from ..ops.attention import attention_with_significance_ref as reference  # noqa: F401  (the semantics)
from ._common import KernelLaunch, cuda_device_guard, multiprocessor_count

__all__ = ["SINGLE_PASS_MAX_N", "attention_launches", "attention_with_significance_triton", "reference"]

# float32's most negative finite value: the reference's bias for padded keys. In the log2 domain it is
# still "minus huge": exp2 of (this - a real score) underflows to exactly 0, and a row whose keys are all
# padded has all scores equal to it, hence uniform attention.
_MASKED_SCORE = tl.constexpr(-3.4028234663852886e38)
_LOG2E = math.log2(math.e)

SINGLE_PASS_MAX_N = 128
"""Longest padded length (power of two) that uses the single-pass kernel (0 disables it).

Chosen from the compiled kernels, not yet from timings: for N <= 128 the single pass does two thirds of
the two-pass arithmetic in one launch, and its whole-row tiles compile without register spills for
fp16/bf16 on sm_80 and sm_90 (ptxas resource usage of the configurations :func:`default_config` picks).
At N = 256 the whole-row tile spills unless query tiles shrink to 16-32 rows, which multiplies the
K/V re-reads. ``benchmarks/gpu_sweep.py`` times both variants at N = 64, 128 and 256 and prints the
threshold its timings support; set this from its ``variants`` table.
"""

# Shared memory a single-pass program may spend on its whole K and V tiles: keeps it within the ~99 KiB
# per block of consumer Ampere/Ada GPUs (data-centre parts have 164-228 KiB).
_SINGLE_PASS_KV_BYTES = 64 * 1024

_single_pass_out_of_resources: set[tuple[int, int, torch.dtype]] = set()


@triton.jit
def _real_span(MASK, b, N, BLOCK: tl.constexpr):
    """First and one-past-last real position of batch row ``b`` ((0, N) when the row has none).

    Blocks outside the span hold only padding; skipping them is exact (their probabilities are exactly
    0 in every row that has a real key), and a row without any real key keeps the full span so that it
    still attends uniformly to every key.
    """
    offs = tl.arange(0, BLOCK)
    first = tl.zeros([BLOCK], tl.int32) + N
    last = tl.full([BLOCK], -1, tl.int32)
    for start in range(0, N, BLOCK):
        idx = start + offs
        real = tl.load(MASK + b * N + idx, mask=idx < N, other=0) != 0
        first = tl.minimum(first, tl.where(real, idx, N))
        last = tl.maximum(last, tl.where(real, idx, -1))
    lo = tl.min(first, 0)
    hi = tl.max(last, 0) + 1
    any_real = lo < N
    return tl.where(any_real, lo, 0), tl.where(any_real, hi, N)


@triton.jit
def _attention_fwd_kernel(
    Q,
    K,
    V,
    MASK,
    OUT,
    LSE,
    stride_qb,
    stride_qn,
    stride_qh,
    stride_kb,
    stride_kn,
    stride_kh,
    stride_vb,
    stride_vn,
    stride_vh,
    stride_ob,
    stride_on,
    N,
    H,
    HEAD_DIM,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SCAN_BLOCK: tl.constexpr,
):
    """Pass 1: flash attention of one (query block, batch x head); writes out and the row lse (base 2)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    d_ok = offs_d < HEAD_DIM

    q = tl.load(
        Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + offs_d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    lo, hi = _real_span(MASK, b, N, SCAN_BLOCK)
    lo = (lo // BLOCK_N) * BLOCK_N
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < N
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        real_k = tl.load(MASK + b * N + cols, mask=col_ok, other=0) != 0
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(real_k[None, :], s, _MASKED_SCORE)
        # Positions past N do not exist (-inf: probability 0 even in an all-padding row); the first
        # block always holds a position < N, so the running max is finite from then on.
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(
        OUT + b * stride_ob + rows[:, None] * stride_on + h * HEAD_DIM + offs_d[None, :],
        out.to(OUT.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )
    tl.store(LSE + pid_bh.to(tl.int64) * N + rows, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _significance_kernel(
    Q,
    K,
    MASK,
    LSE,
    SIG,
    stride_qb,
    stride_qn,
    stride_qh,
    stride_kb,
    stride_kn,
    stride_kh,
    N,
    H,
    HEAD_DIM,
    qk_scale,
    EXCLUDE_SELF: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SCAN_BLOCK: tl.constexpr,
):
    """Pass 2: significance of one (key block, batch), summed over heads and real query rows in registers."""
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = cols < N
    d_ok = offs_d < HEAD_DIM
    real_k = tl.load(MASK + b * N + cols, mask=col_ok, other=0) != 0

    # Only query rows in the real span vote. A key block without a real key gets exactly 0 from every
    # real row, so its loop is left empty.
    lo, hi = _real_span(MASK, b, N, SCAN_BLOCK)
    lo = (lo // BLOCK_M) * BLOCK_M
    hi = tl.where(tl.max(real_k.to(tl.int32), 0) > 0, hi, lo)

    col_sum = tl.zeros([BLOCK_N], tl.float32)
    for h in range(0, H):
        k = tl.load(
            K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + offs_d[None, :],
            mask=col_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        q_base = Q + b * stride_qb + h * stride_qh
        lse_base = LSE + (b * H + h) * N
        for start_m in range(lo, hi, BLOCK_M):
            rows = start_m + offs_m
            row_ok = rows < N
            real_q = tl.load(MASK + b * N + rows, mask=row_ok, other=0) != 0
            q = tl.load(
                q_base + rows[:, None] * stride_qn + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0
            )
            lse = tl.load(lse_base + rows, mask=row_ok, other=0.0)
            # Scores transposed, keys x queries: the column sums become row sums, which stay within a
            # warp in the MMA layout instead of crossing warps through shared memory.
            s = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
            s = tl.where(real_k[:, None], s, _MASKED_SCORE)
            p = tl.exp2(s - lse[None, :])
            vote = col_ok[:, None] & real_q[None, :]
            if EXCLUDE_SELF:
                vote = vote & (cols[:, None] != rows[None, :])
            col_sum += tl.sum(tl.where(vote, p, 0.0), 1)
    tl.store(SIG + b * N + cols, col_sum, mask=col_ok)


@triton.jit
def _attention_single_pass_kernel(
    Q,
    K,
    V,
    MASK,
    OUT,
    PARTIAL,
    stride_qb,
    stride_qn,
    stride_qh,
    stride_kb,
    stride_kn,
    stride_kh,
    stride_vb,
    stride_vn,
    stride_vh,
    stride_ob,
    stride_on,
    N,
    H,
    HEAD_DIM,
    qk_scale,
    EXCLUDE_SELF: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Single pass (BLOCK_N >= N): exact softmax of one (query block, batch x head), out + column partials."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    col_ok = cols < N
    d_ok = offs_d < HEAD_DIM

    q = tl.load(
        Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + offs_d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    kv_mask = col_ok[:, None] & d_ok[None, :]
    k = tl.load(
        K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0
    )
    real_k = tl.load(MASK + b * N + cols, mask=col_ok, other=0) != 0
    real_q = tl.load(MASK + b * N + rows, mask=row_ok, other=0) != 0

    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    s = tl.where(real_k[None, :], s, _MASKED_SCORE)
    s = tl.where(col_ok[None, :], s, float("-inf"))
    m = tl.max(s, 1)
    p = tl.exp2(s - m[:, None])
    inv_l = 1.0 / tl.sum(p, 1)
    v = tl.load(
        V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0
    )
    out = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION) * inv_l[:, None]
    tl.store(
        OUT + b * stride_ob + rows[:, None] * stride_on + h * HEAD_DIM + offs_d[None, :],
        out.to(OUT.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )

    vote = real_q[:, None] & col_ok[None, :]
    if EXCLUDE_SELF:
        vote = vote & (rows[:, None] != cols[None, :])
    col_sum = tl.sum(tl.where(vote, p * inv_l[:, None], 0.0), 0)
    # Partials laid out (B, H, query blocks, N): one deterministic sum over the middle two axes follows.
    part_row = pid_bh.to(tl.int64) * tl.num_programs(0) + pid_m
    tl.store(PARTIAL + part_row * N + cols, col_sum, mask=col_ok)


@dataclass(frozen=True)
class AttentionConfig:
    """Launch parameters. ``variant`` is ``"two_pass"`` or ``"single_pass"``; the rest are tile sizes.

    ``block_m``/``block_n`` are pass 1's query/key tiles (single pass: query tile; its key tile is the
    padded length); ``sig_block_m``/``sig_block_n`` are pass 2's query/key tiles.
    """

    variant: str
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    sig_block_m: int = 64
    sig_block_n: int = 64
    sig_num_warps: int = 4


def _pow2(x: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(x))


def single_pass_fits(seq_len: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether automatic dispatch uses the single-pass kernel for this shape.

    Only 16-bit inputs: fp32 dots run on CUDA cores (IEEE, not TF32) and hold their operands in
    registers, so fp32 whole-row tiles spill.
    """
    n_pad, d_pad = _pow2(seq_len), _pow2(head_dim)
    elem = torch.finfo(dtype).bits // 8
    return (
        elem == 2 and n_pad <= SINGLE_PASS_MAX_N and d_pad <= 128 and 2 * n_pad * d_pad * elem <= _SINGLE_PASS_KV_BYTES
    )


def default_config(
    batch: int,
    seq_len: int,
    heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    variant: str | None = None,
) -> AttentionConfig:
    """Tile sizes for a call; fixed per shape (no autotuning), so results are reproducible run to run.

    Autotuning would pick configurations per process by timing, and a different tile order changes the
    rounding of the significance, which can flip the selection of near-tied vectors between runs.
    ``variant`` forces ``"single_pass"`` (N up to 256) or ``"two_pass"``; ``None`` picks the single pass
    where :func:`single_pass_fits`. Every choice below compiles without register spills on sm_80 and
    sm_90 for d = 32, 64, 128 and 256 (ptxas resource usage), except the forced single pass at N = 256,
    d = 128.
    """
    d_pad = _pow2(head_dim)
    n_pad = _pow2(seq_len)
    if variant not in (None, "single_pass", "two_pass"):
        raise ValueError(f"variant must be 'single_pass', 'two_pass' or None, got {variant!r}")
    if variant == "single_pass" and n_pad > 256:
        raise ValueError(f"variant 'single_pass' holds whole rows of at most 256 positions, got N={seq_len}")
    automatic = variant is None and (n_pad, d_pad, dtype) not in _single_pass_out_of_resources
    if variant == "single_pass" or (automatic and single_pass_fits(seq_len, head_dim, dtype)):
        # The score tile is block_m x n_pad fp32: fewer query rows as rows and heads get wider.
        if n_pad <= 128:
            block_m = 64 if d_pad <= 64 else 32
        else:
            block_m = 32 if d_pad == 64 else 16
        block_m = min(block_m, n_pad)
        return AttentionConfig("single_pass", block_m, n_pad, 8 if block_m * n_pad >= 64 * 64 else 4, 1)

    # (pass-1 query tile, key tile, warps, stages), (pass-2 query tile, key tile, warps). Pass 2 reads a
    # batch row's whole Q once per key tile (B*H*N*d*(N/tile) elements in all, mostly from L2), hence
    # its wide key tiles. fp32 uses IEEE dots on CUDA cores, whose operands live in registers: small tiles.
    if dtype != torch.float32:
        if d_pad <= 64:
            fwd, sig = (128, 64, 8, 3), (32, 128, 8)
        elif d_pad <= 128:
            fwd, sig = (64, 32, 8, 2), (64, 64, 8)
        else:
            fwd, sig = (32, 32, 8, 2), (32, 32, 8)
    elif d_pad <= 64:
        fwd, sig = (64, 32, 8, 2), (64, 32, 8)
    else:
        fwd, sig = (16, 16, 4, 2), (16, 16, 4)
    sig_block_n = min(sig[1], n_pad)
    # Pass 2 has only B x (N / key tile) programs: narrower key tiles while the GPU is not covered.
    sms = multiprocessor_count(device)
    while sig_block_n > 16 and batch * triton.cdiv(seq_len, sig_block_n) < sms:
        sig_block_n //= 2
    return AttentionConfig(
        "two_pass", min(fwd[0], n_pad), min(fwd[1], n_pad), fwd[2], fwd[3], min(sig[0], n_pad), sig_block_n, sig[2]
    )


def attention_launches(
    batch: int,
    seq_len: int,
    heads: int,
    head_dim: int,
    dtype: torch.dtype,
    exclude_self: bool,
    config: AttentionConfig,
) -> tuple[KernelLaunch, ...]:
    """The launches of one attention call with ``config``: one single-pass launch, or pass 1 and pass 2.

    Args:
        batch, seq_len, heads, head_dim: B, N, H and d of the (B, N, H, d) inputs.
        dtype: the inputs' dtype (float32 inputs take IEEE dots, exact as the reference's).
        exclude_self: leave each vector's attention to itself out of its significance.
        config: tile sizes and variant (:func:`default_config`).
    """
    if config.variant not in ("single_pass", "two_pass"):
        raise ValueError(f"config.variant must be 'two_pass' or 'single_pass', got {config.variant!r}")
    block_d = _pow2(head_dim)
    precision = "ieee" if dtype == torch.float32 else "tf32"
    if config.variant == "single_pass":
        if config.block_n < seq_len:
            raise ValueError(f"config.block_n must cover N={seq_len} for the single-pass kernel, got {config.block_n}")
        consts = dict(
            EXCLUDE_SELF=bool(exclude_self),
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            BLOCK_D=block_d,
            DOT_PRECISION=precision,
        )
        grid = (triton.cdiv(seq_len, config.block_m), batch * heads)
        return (
            KernelLaunch(
                "attention_single_pass",
                _attention_single_pass_kernel,
                grid,
                consts,
                config.num_warps,
                config.num_stages,
            ),
        )
    # The span of real positions is found with one vector load for N <= 1024.
    scan_block = min(_pow2(seq_len), 1024)
    pass1 = dict(
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_D=block_d,
        DOT_PRECISION=precision,
        SCAN_BLOCK=scan_block,
    )
    pass2 = dict(
        EXCLUDE_SELF=bool(exclude_self),
        BLOCK_M=config.sig_block_m,
        BLOCK_N=config.sig_block_n,
        BLOCK_D=block_d,
        DOT_PRECISION=precision,
        SCAN_BLOCK=scan_block,
    )
    return (
        KernelLaunch(
            "attention_pass1",
            _attention_fwd_kernel,
            (triton.cdiv(seq_len, config.block_m), batch * heads),
            pass1,
            config.num_warps,
            config.num_stages,
        ),
        KernelLaunch(
            "attention_pass2",
            _significance_kernel,
            (triton.cdiv(seq_len, config.sig_block_n), batch),
            pass2,
            config.sig_num_warps,
            config.num_stages,
        ),
    )


def attention_with_significance_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    scale: float,
    exclude_self: bool,
    *,
    out: torch.Tensor | None = None,
    significance: torch.Tensor | None = None,
    config: AttentionConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of ``powerbert::attention_with_significance`` (arguments already checked).

    Args:
        q, k, v: (B, N, H, d) float16/bfloat16/float32, any strides with the last dimension contiguous.
        key_padding_mask: (B, N) bool, True = real token.
        scale: score scale.
        exclude_self: leave each real vector's attention to itself out of its significance.
        out: optional (B, N, H*d) contiguous buffer in q's dtype to write the output into (tests pass
            NaN-filled buffers so that any element left unwritten shows).
        significance: optional (B, N) contiguous float32 buffer, likewise.
        config: launch parameters; default :func:`default_config`.

    Returns:
        out: (B, N, H*d) in q's dtype; significance: (B, N) float32.
    """
    B, N, H, d = q.shape
    if out is None:
        out = torch.empty(B, N, H * d, dtype=q.dtype, device=q.device)
    if significance is None:
        significance = torch.empty(B, N, dtype=torch.float32, device=q.device)
    _check_buffer("out", out, (B, N, H * d), q.dtype, q.device)
    _check_buffer("significance", significance, (B, N), torch.float32, q.device)
    if config is None:
        config = default_config(B, N, H, d, q.dtype, q.device)
    mask = key_padding_mask.contiguous().view(torch.uint8)
    qk_scale = float(scale) * _LOG2E
    strides = (*_bnh(q), *_bnh(k), *_bnh(v))

    with cuda_device_guard(q.device):
        if config.variant == "single_pass":
            (single,) = attention_launches(B, N, H, d, q.dtype, exclude_self, config)
            try:
                # Partials laid out (B, H, query blocks, N); a fixed-shape reduction follows: the same
                # order on every run, unlike atomics.
                partial = torch.empty(B, H * single.grid[0], N, dtype=torch.float32, device=q.device)
                single.launch(q, k, v, mask, out, partial, *strides, out.stride(0), out.stride(1), N, H, d, qk_scale)
                torch.sum(partial, dim=1, out=significance)
                return out, significance
            except OutOfResources:
                # This GPU has too little shared memory or registers for the whole-row tile: remember
                # and use the two-pass kernels, which stream the keys in small tiles.
                _single_pass_out_of_resources.add((_pow2(N), _pow2(d), q.dtype))
                config = default_config(B, N, H, d, q.dtype, q.device, variant="two_pass")
        pass1, pass2 = attention_launches(B, N, H, d, q.dtype, exclude_self, config)
        lse = torch.empty(B * H, N, dtype=torch.float32, device=q.device)
        pass1.launch(q, k, v, mask, out, lse, *strides, out.stride(0), out.stride(1), N, H, d, qk_scale)
        pass2.launch(q, k, mask, lse, significance, *strides[:6], N, H, d, qk_scale)
    return out, significance


def _bnh(t: torch.Tensor) -> tuple[int, int, int]:
    # Strides of the batch, position and head axes; the model's q/k/v are views of a (B, N, H*d) linear
    # output, so these are (N*H*d, H*d, d) for them, and anything else with a unit last stride works too.
    return t.stride(0), t.stride(1), t.stride(2)


def _check_buffer(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
    if tuple(t.shape) != shape or t.dtype != dtype or t.device != device or not t.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous {dtype} tensor of shape {shape} on {device}, "
            f"got {t.dtype} {tuple(t.shape)} on {t.device}"
        )
