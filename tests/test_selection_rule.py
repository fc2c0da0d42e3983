"""The selection rule of select-and-gather, specified once (``ops.preference_key``), against the reference,
the C++/CUDA kernels' uint64 keys (key by key, up to the largest N they order) and the C++ kernel's output
on random rows full of ties, signed zeros, infinities and NaNs. The Triton kernel's keys and output are
checked against the same specification in ``test_triton_select_gather.py``."""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from powerbert_kernels import ext, ops

CSRC = Path(__file__).resolve().parent.parent / "csrc"
# Few distinct values, so that rows are full of ties; both zeros, both infinities and NaN.
SIGNIFICANCES = st.sampled_from([0.0, -0.0, 0.25, 1.0, -1.0, 3.5, 1e-30, math.inf, -math.inf, math.nan])
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def spec_order(keys: list[tuple]) -> list[int]:
    """Indices of ``keys`` from most to least preferred."""
    return sorted(range(len(keys)), key=lambda i: keys[i], reverse=True)


def spec_select(significance: list[float], mask: list[bool], keep: int) -> list[int]:
    """The kept positions of one row in output order, from :func:`ops.preference_key` alone."""
    cls = mask.index(True) if any(mask) else 0
    keys = [ops.preference_key(s, i, i == cls, m) for i, (s, m) in enumerate(zip(significance, mask, strict=True))]
    kept = spec_order(keys)[:keep]
    return sorted(i for i in kept if mask[i]) + sorted(i for i in kept if not mask[i])


@st.composite
def rows(draw, max_n: int = 12, max_batch: int = 3):
    n = draw(st.integers(1, max_n))
    batch = draw(st.integers(1, max_batch))
    significance = [draw(st.lists(SIGNIFICANCES, min_size=n, max_size=n)) for _ in range(batch)]
    mask = [draw(st.lists(st.booleans(), min_size=n, max_size=n)) for _ in range(batch)]
    return significance, mask, draw(st.integers(1, n))


def check_against_spec(select, significance, mask, keep) -> None:
    sig = torch.tensor(significance, dtype=torch.float32)
    m = torch.tensor(mask, dtype=torch.bool)
    hidden = torch.arange(sig.numel() * 2, dtype=torch.float32).view(*sig.shape, 2)
    kept, mask_kept, indices = select(hidden, sig, m, keep)
    for row in range(sig.shape[0]):
        want = spec_select(significance[row], mask[row], keep)
        assert indices[row].tolist() == want, f"row {row}: {significance[row]} {mask[row]} keep={keep}"
        assert mask_kept[row].tolist() == [mask[row][i] for i in want]
        assert torch.equal(kept[row], hidden[row, want])


def test_preference_key_orders_as_documented():
    nan, keys = math.nan, {}
    keys["cls"] = ops.preference_key(-math.inf, 5, True, True)
    keys["nan"] = ops.preference_key(nan, 9, False, True)
    keys["inf"] = ops.preference_key(math.inf, 1, False, True)
    keys["tie_low"] = ops.preference_key(0.0, 2, False, True)
    keys["tie_high"] = ops.preference_key(-0.0, 3, False, True)
    keys["padding_low"] = ops.preference_key(math.inf, 0, False, False)
    keys["padding_high"] = ops.preference_key(nan, 4, False, False)
    assert sorted(keys, key=keys.get, reverse=True) == [
        "cls",
        "nan",
        "inf",
        "tie_low",
        "tie_high",
        "padding_low",
        "padding_high",
    ]


@SETTINGS
@given(rows())
def test_reference_follows_the_spec(case):
    check_against_spec(ops.select_gather_ref, *case)


@pytest.mark.skipif(not ext.is_loaded(), reason=f"compiled extension not available: {ext.LOAD_ERROR}")
@SETTINGS
@given(rows(max_n=40))
def test_ext_kernel_follows_the_spec(case):
    check_against_spec(ext.select_gather_ext, *case)


@st.composite
def positions(draw, n_max: int):
    """Distinct positions of one row of the longest length a kernel orders, from both of its ends."""
    ends = st.one_of(st.integers(0, 6), st.integers(n_max - 6, n_max - 1))
    pos = draw(st.lists(ends, min_size=2, max_size=8, unique=True))
    sig = draw(st.lists(SIGNIFICANCES, min_size=len(pos), max_size=len(pos)))
    real = draw(st.lists(st.booleans(), min_size=len(pos), max_size=len(pos)))
    cls = draw(st.sampled_from(pos))
    return pos, sig, real, cls


def assert_same_order(kernel_keys: list[int], pos, sig, real, cls) -> None:
    spec = [ops.preference_key(s, p, p == cls, r) for p, s, r in zip(pos, sig, real, strict=True)]
    assert spec_order(kernel_keys) == spec_order(spec), list(zip(pos, sig, real, kernel_keys, strict=True))
    assert len(set(kernel_keys)) == len(kernel_keys)


@pytest.fixture(scope="module")
def cpp_keys(tmp_path_factory):
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None or not (CSRC / "powerbert" / "common.h").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: a C++ compiler and csrc/ are needed to test the C++ selection keys")
        pytest.skip("no C++ compiler (or no source checkout) for the C++ selection keys")
    folder = tmp_path_factory.mktemp("keys")
    source = folder / "keys.cpp"
    source.write_text(
        '#include "powerbert/common.h"\n'
        'extern "C" unsigned long long pb_key(int cls, int real, float s, long long pos) {\n'
        "  return powerbert::selection_key(cls != 0, real != 0, s, pos);\n"
        "}\n"
        'extern "C" long long pb_max_positions() { return powerbert::kMaxPositions; }\n'
    )
    library = folder / "libkeys.so"
    subprocess.run(
        [compiler, "-std=c++17", "-O1", "-shared", "-fPIC", f"-I{CSRC}", str(source), "-o", str(library)],
        check=True,
        capture_output=True,
        text=True,
    )
    lib = ctypes.CDLL(str(library))
    lib.pb_key.restype = ctypes.c_ulonglong
    lib.pb_key.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_longlong]
    lib.pb_max_positions.restype = ctypes.c_longlong
    return lib


@SETTINGS
@given(data=st.data())
def test_cpp_keys_follow_the_spec_up_to_the_largest_n(cpp_keys, data):
    pos, sig, real, cls = data.draw(positions(cpp_keys.pb_max_positions()))
    keys = [cpp_keys.pb_key(p == cls, r, s, p) for p, s, r in zip(pos, sig, real, strict=True)]
    assert_same_order(keys, pos, sig, real, cls)
