"""``powerbert check-cuda``: every CUDA kernel compiles for the K80 (sm_37), Pascal, Turing, Ampere and
Hopper, without a GPU. sm_75 and newer use the machine's nvcc; sm_37 and sm_60 use CUDA 11.8's NVRTC and
ptxas from their PyPI packages (the ``test`` extra). Missing compilers skip these tests, except under CI
(CI=true), where they are a failure."""

from __future__ import annotations

import locale
import os
import shutil
from pathlib import Path

import pytest

from powerbert_kernels import check_cuda
from powerbert_kernels.cli import main

# Kernels instantiated in csrc/check_kernels.cu: 6 significance variants, the split reduction, select,
# and 5 gather copy widths.
KERNELS = 13
CI = os.environ.get("CI") == "true"


def _nvcc_archs() -> set[int]:
    nvcc = check_cuda.find_nvcc()
    return check_cuda.nvcc_archs(nvcc)[1] if nvcc else set()


def _nvrtc_available() -> bool:
    try:
        check_cuda.Nvrtc()
        check_cuda.find_ptxas11()
    except (check_cuda.CompileError, OSError):
        return False
    return True


def require_compiler(arch: int) -> None:
    if arch in _nvcc_archs() or (arch < 75 and _nvrtc_available()):
        return
    message = (
        f"no compiler for sm_{arch}: nvcc (CUDA 13 for sm_75+) or nvidia-cuda-nvrtc-cu11 and "
        "nvidia-cuda-nvcc-cu11 (for sm_37, sm_60) must be installed"
    )
    if CI:
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


@pytest.mark.parametrize("arch", [37, 60, 75, 80, 90])
def test_every_kernel_compiles_for(arch, capsys):
    require_compiler(arch)
    encoding = locale.getpreferredencoding(False)
    assert main(["check-cuda", "--arch", str(arch), "--verbose"]) == 0
    # NVRTC switches the thread's C locale; check-cuda must leave the process as it found it.
    assert locale.getpreferredencoding(False) == encoding
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"sm_{arch}: ok", out
    assert f": {KERNELS} kernels" in out, out
    assert "0 bytes spilled" in out and "bytes spilled" not in out.replace("0 bytes spilled", ""), out


def test_compiler_errors_are_reported_per_architecture(tmp_path: Path, capsys):
    archs = [arch for arch in (37, 90) if arch in _nvcc_archs() or (arch < 75 and _nvrtc_available())]
    if not archs:
        require_compiler(37)
    source = check_cuda.find_source_dir()
    shutil.copytree(source, tmp_path / "csrc")
    broken = tmp_path / "csrc" / check_cuda.SOURCE_NAME
    broken.write_text(broken.read_text() + '\nstatic_assert(false, "deliberately broken");\n')
    code = main(["check-cuda", "--arch", ",".join(map(str, archs)), "--source", str(tmp_path / "csrc")])
    out = capsys.readouterr().out
    assert code == 1
    for arch in archs:
        assert f"sm_{arch}: " in out and f"sm_{arch}: ok" not in out
    assert "deliberately broken" in out


def test_architecture_without_a_compiler_fails(capsys):
    assert main(["check-cuda", "--arch", "10"]) == 1
    assert capsys.readouterr().out.startswith("sm_10: no compiler for sm_10")


def test_parse_archs():
    assert check_cuda.parse_archs("37, 6.0;sm_75,compute_90") == [37, 60, 75, 90]
    with pytest.raises(ValueError, match="not a compute capability"):
        check_cuda.parse_archs("x7")
