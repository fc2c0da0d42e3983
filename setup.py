"""Build script: the Python package, plus the compiled extension ``powerbert_kernels._C`` when it can be built.

The extension holds C++ CPU kernels, built wherever PyTorch and a C++ compiler are present, and CUDA
kernels, built when PyTorch has CUDA and a CUDA toolkit is found. Without them the package installs as
pure Python and the PyTorch reference path remains. Install with ``pip install --no-build-isolation``
so that the build sees the PyTorch it will run with.

Environment switches:
    POWERBERT_NO_EXT=1        build no extension at all.
    POWERBERT_CUDA=auto|0|1   CUDA kernels when a CUDA PyTorch and a toolkit are present (auto, the
                              default), never (0), or always (1: fail when either is missing).
    TORCH_CUDA_ARCH_LIST      GPU architectures, e.g. "3.7" for a K80 or "6.0;7.0;7.5+PTX" (PyTorch's
                              variable; default: the GPUs of this machine, else PyTorch's own list).
    POWERBERT_EXT_REQUIRED=1  fail the installation when the extension does not build (default: warn
                              and install without it).
    MAX_JOBS                  parallel compile jobs (PyTorch's variable; ninja is used when installed).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CSRC = "csrc"
# Device code shipped inside the package, so that `powerbert check-cuda` works from an installed wheel.
DEVICE_SOURCES = ("powerbert/common.h", "powerbert/cuda_kernels.cuh", "powerbert/cuda_launch.cuh", "check_kernels.cu")


def _say(message: str) -> None:
    print(f"powerbert-kernels: {message}", file=sys.stderr)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _cuda_arch_tag() -> str:
    """The architectures the CUDA build targets, as one preprocessor token: sm_37+sm_60+compute_90."""
    try:
        from torch.utils.cpp_extension import _get_cuda_arch_flags  # honours TORCH_CUDA_ARCH_LIST

        flags = _get_cuda_arch_flags()
    except Exception:  # a private helper: only informational, so never fail the build over it
        return "unknown"
    codes: list[str] = []
    for flag in flags:  # -gencode=arch=compute_37,code=sm_37 or ...,code=[sm_90,compute_90]
        for group in re.findall(r"code=\[?((?:sm|compute)_\w+(?:,(?:sm|compute)_\w+)*)", flag):
            codes.extend(code for code in group.split(",") if code not in codes)
    return "+".join(codes) or "unknown"


def _extensions() -> tuple[list, dict]:
    """The extension modules to build and the build_ext command, or nothing (with the reason printed)."""
    if _flag("POWERBERT_NO_EXT"):
        _say("POWERBERT_NO_EXT is set: installing without the compiled extension")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        _say(
            f"PyTorch is not importable at build time ({exc}): installing without the compiled extension; "
            "install PyTorch first, then this package with `pip install --no-build-isolation`"
        )
        return [], {}
    cxx = (os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++").split()[0]
    if shutil.which(cxx) is None:
        _say(f"no C++ compiler ({cxx!r} not found): installing without the compiled extension")
        return [], {}

    mode = os.environ.get("POWERBERT_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"POWERBERT_CUDA must be auto, 0 or 1, got {mode!r}")
    missing = []
    if mode != "0":
        if torch.version.cuda is None:
            missing.append(f"PyTorch {torch.__version__} is built without CUDA")
        if cpp_extension.CUDA_HOME is None:
            missing.append("no CUDA toolkit found (set CUDA_HOME)")
        if missing and mode == "1":
            raise SystemExit("POWERBERT_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(missing))
    with_cuda = mode != "0" and not missing
    _say(
        "building the C++ CPU kernels"
        + (
            " and the CUDA kernels"
            if with_cuda
            else f" only (no CUDA kernels: {'; '.join(missing) or 'POWERBERT_CUDA=0'})"
        )
    )

    sources = [f"{CSRC}/ops.cpp", f"{CSRC}/attention_cpu.cpp"]
    macros = [("POWERBERT_WITH_CUDA", "1" if with_cuda else "0")]
    # -O3 for the vectorised column sums; -g0 keeps the build quick and the library small. PyTorch adds
    # the C++ standard its headers need.
    cxx_flags = ["-O3", "-g0"]
    link_flags = []
    if sys.platform.startswith("linux"):
        # at::parallel_for only runs in parallel when the calling code is compiled with OpenMP.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    compile_args: dict[str, list[str]] = {"cxx": cxx_flags}
    extension = cpp_extension.CppExtension
    if with_cuda:
        sources.append(f"{CSRC}/ops_cuda.cu")
        macros.append(("POWERBERT_CUDA_ARCHS", _cuda_arch_tag()))
        compile_args["nvcc"] = ["-O3", "-Wno-deprecated-gpu-targets"]
        extension = cpp_extension.CUDAExtension
    module = extension(
        "powerbert_kernels._C",
        sources,
        include_dirs=[str(Path(__file__).resolve().parent / CSRC)],
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_flags,
    )

    class BuildExtension(cpp_extension.BuildExtension):
        """PyTorch's build_ext, made optional: a failed build warns and installs the pure-Python package."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as exc:
                if _flag("POWERBERT_EXT_REQUIRED"):
                    raise
                _say(
                    f"the compiled extension failed to build ({type(exc).__name__}: {exc}); installing "
                    "without it (set POWERBERT_EXT_REQUIRED=1 to make this an error)"
                )

    return [module], {"build_ext": BuildExtension}


class BuildPy(build_py):
    """build_py that also copies the device sources into the package, for `powerbert check-cuda`."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "powerbert_kernels" / "ext" / "csrc"
        for name in DEVICE_SOURCES:
            source = Path(CSRC) / name
            if source.is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target / name)


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPy, **cmdclass})
