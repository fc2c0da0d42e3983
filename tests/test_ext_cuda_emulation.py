"""The CUDA kernels of the extension, run on the CPU through a host emulation of CUDA.

csrc/emulation/ compiles the very kernels and launch plans of csrc/powerbert/cuda_kernels.cuh as plain
C++ (each GPU thread an OS thread, __syncthreads a barrier, warp shuffles and ballots emulated), so
their indexing, tiling, row splits, vectorised loads, ranks and slots are checked against the
references on machines without a GPU. Performance and memory-model effects are the GPU tests' job.
Needs a C++20 compiler; under CI (CI=true) a missing one is a failure.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from powerbert_kernels.ops import select_gather_ref

CSRC = Path(__file__).resolve().parent.parent / "csrc"
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
i64 = ctypes.c_longlong


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> ctypes.CDLL:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None or not (CSRC / "emulation" / "emulate_kernels.cpp").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: a C++20 compiler and csrc/emulation are needed for the CUDA emulation test")
        pytest.skip("no C++ compiler (or no source checkout) for the CUDA emulation")
    library = tmp_path_factory.mktemp("emulation") / "libpowerbert_emulation.so"
    subprocess.run(
        [
            compiler,
            "-std=c++20",
            "-O1",
            "-pthread",
            "-shared",
            "-fPIC",
            "-Wno-unknown-pragmas",
            f"-I{CSRC}",
            str(CSRC / "emulation" / "emulate_kernels.cpp"),
            "-o",
            str(library),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    lib = ctypes.CDLL(str(library))
    lib.pb_emu_significance.restype = ctypes.c_int
    lib.pb_emu_significance.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        i64,
        i64,
        i64,
        ctypes.c_void_p,
        i64,
        i64,
        i64,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    lib.pb_emu_select_gather.restype = ctypes.c_int
    lib.pb_emu_select_gather.argtypes = [
        ctypes.c_void_p,
        i64,
        i64,
        ctypes.c_void_p,
        i64,
        i64,
        i64,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        i64,
        i64,
        i64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    return lib


def significance_expected(probs, mask, q_offset, exclude_self):
    B, H, n_q, N = probs.shape
    p = probs.double().clone()
    if exclude_self:
        torch.diagonal(p, offset=q_offset, dim1=-2, dim2=-1).zero_()
    return (p * mask[:, q_offset : q_offset + n_q].double()[:, None, :, None]).sum(dim=(1, 2))


def emulated_significance(lib, probs, mask, q_offset, exclude_self, num_sms):
    B, H, n_q, N = probs.shape
    assert probs.stride(-1) == 1
    out = torch.full((B, N), float("nan"))
    code = lib.pb_emu_significance(
        DTYPE_CODES[probs.dtype],
        probs.data_ptr(),
        *(probs.stride(i) if probs.size(i) > 1 else 0 for i in range(3)),
        mask.data_ptr(),
        mask.stride(0),
        mask.stride(1),
        B,
        H,
        n_q,
        N,
        q_offset,
        int(exclude_self),
        num_sms,
        out.data_ptr(),
    )
    return out, code // 100000, code % 100000


def make_mask(B, N, g, left=False):
    lengths = torch.randint(1, N + 1, (B,), generator=g)
    positions = torch.arange(N)[None, :]
    mask = positions >= N - lengths[:, None] if left else positions < lengths[:, None]
    mask[0] = True
    return mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "B,H,n_q,N,q_offset,num_sms,aligned",
    [
        (2, 3, 40, 64, 0, 1, True),  # vectorised loads, one split
        (1, 4, 80, 80, 0, 16, True),  # vectorised, rows split over blocks + the fixed-order second pass
        (3, 2, 9, 65, 30, 4, True),  # N not a multiple of the vector width: scalar loads, a block of rows
        (2, 3, 33, 128, 0, 2, False),  # a misaligned view: scalar loads
    ],
)
def test_significance_kernel(emulator, dtype, B, H, n_q, N, q_offset, num_sms, aligned):
    g = torch.Generator().manual_seed(N + n_q)
    base = torch.randn(B, H, n_q, N + 8, generator=g).softmax(-1).to(dtype)
    probs = base[..., :N] if aligned else base[..., 1 : N + 1]
    mask = make_mask(B, N, g, left=q_offset > 0)
    for exclude_self in (False, True):
        got, vec, splits = emulated_significance(emulator, probs, mask, q_offset, exclude_self, num_sms)
        expected = significance_expected(probs, mask, q_offset, exclude_self)
        torch.testing.assert_close(got.double(), expected, rtol=2e-6, atol=2e-6)
    wide = 4 if dtype == torch.float32 else 8
    assert vec == (wide if aligned and N % wide == 0 else 1)
    assert (splits > 1) == (num_sms == 16)


@pytest.mark.parametrize(
    "N,D,dtype,keep_list",
    [
        (7, 4, torch.float32, [1, 3, 7]),  # 16-byte copies
        (300, 4, torch.float16, [1, 150, 299]),  # two chunks of 256 positions, 8-byte copies
        (33, 1, torch.float32, [5, 33]),  # 4-byte copies
        (40, 3, torch.float16, [20]),  # 2-byte copies
    ],
)
def test_select_gather_kernels(emulator, N, D, dtype, keep_list):
    g = torch.Generator().manual_seed(N * 3 + D)
    B = 3
    mask = make_mask(B, N, g, left=True)
    mask[-1] = False  # a row without any real token
    sig = torch.randint(-2, 5, (B, N), generator=g).float()  # ties matter; padding values must not
    if N > 4:
        sig[0, 1], sig[0, 2] = float("nan"), -0.0
    hidden = torch.randn(B, N, D, generator=g).to(dtype)
    for keep in keep_list:
        indices = torch.full((B, keep), -1, dtype=torch.int64)
        mask_out = torch.zeros(B, keep, dtype=torch.bool)
        out = torch.full((B, keep, D), float("nan"), dtype=dtype)
        unit = emulator.pb_emu_select_gather(
            sig.data_ptr(),
            sig.stride(0),
            sig.stride(1),
            mask.data_ptr(),
            mask.stride(0),
            mask.stride(1),
            B,
            N,
            keep,
            hidden.data_ptr(),
            hidden.stride(0) * hidden.element_size(),
            hidden.stride(1) * hidden.element_size(),
            D * hidden.element_size(),
            indices.data_ptr(),
            mask_out.data_ptr(),
            out.data_ptr(),
            4,
        )
        want = select_gather_ref(hidden, sig, mask, keep)
        assert torch.equal(indices, want[2]), (keep, indices, want[2])
        assert torch.equal(mask_out, want[1])
        assert torch.equal(out, want[0])
        assert unit == min(16, D * hidden.element_size() & -(D * hidden.element_size()))


def test_gather_byte_copies(emulator):
    # Rows of an odd number of bytes: the 1-byte copy path.
    g = torch.Generator().manual_seed(0)
    B, N, row, keep = 2, 9, 3, 4
    mask = torch.ones(B, N, dtype=torch.bool)
    sig = torch.rand(B, N, generator=g)
    hidden = torch.randint(0, 255, (B, N, row), generator=g, dtype=torch.uint8)
    indices = torch.empty(B, keep, dtype=torch.int64)
    mask_out = torch.empty(B, keep, dtype=torch.bool)  # held here: the C side writes into it
    out = torch.zeros(B, keep, row, dtype=torch.uint8)
    unit = emulator.pb_emu_select_gather(
        sig.data_ptr(),
        N,
        1,
        mask.data_ptr(),
        N,
        1,
        B,
        N,
        keep,
        hidden.data_ptr(),
        N * row,
        row,
        row,
        indices.data_ptr(),
        mask_out.data_ptr(),
        out.data_ptr(),
        1,
    )
    assert unit == 1
    want = select_gather_ref(hidden.float(), sig, mask, keep)
    assert torch.equal(indices, want[2])
    assert torch.equal(out, hidden.gather(1, indices[:, :, None].expand(B, keep, row)))
