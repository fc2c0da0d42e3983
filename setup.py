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

PyTorch's CUDA headers include the math libraries' headers (cuSPARSE, cuBLAS, cuSOLVER). A CUDA toolkit
without them (a slim installation) is completed from the NVIDIA wheels that a CUDA build of PyTorch
installs beside it, those of PyTorch's CUDA major version only (``nvidia/cu13/include`` from CUDA 13 on,
``nvidia/<library>/include`` of the ``-cu12``/``-cu11`` wheels before); folders in ``CPATH`` count too.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import sys
import sysconfig
from collections.abc import Iterable, Mapping
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


# Included by ATen/cuda/CUDAContextLight.h, which every CUDA extension of PyTorch includes; the wheel
# that ships each one, by library.
MATH_HEADERS = {"cusparse.h": "cusparse", "cublas_v2.h": "cublas", "cublasLt.h": "cublas", "cusolverDn.h": "cusolver"}


def toolkit_include_dirs(cuda_home: str | None, environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Folders the compilers search for CUDA headers before any wheel: the toolkit's and ``CPATH``'s."""
    dirs = []
    if cuda_home:
        dirs.append(Path(cuda_home) / "include")
        dirs.extend(sorted((Path(cuda_home) / "targets").glob("*/include")))
    for variable in ("CPATH", "CPLUS_INCLUDE_PATH", "C_INCLUDE_PATH"):
        dirs.extend(Path(entry) for entry in environ.get(variable, "").split(os.pathsep) if entry)
    return dirs


def nvidia_wheel_include_dirs(cuda_major: int, search_path: Iterable[str] | None = None) -> list[Path]:
    """Include folders of the installed NVIDIA wheels built for CUDA ``cuda_major``.

    CUDA 13 wheels (``nvidia-cublas`` ...) install into ``nvidia/cu13/include``; CUDA 12 and 11 wheels
    (``nvidia-cublas-cu12`` ...) into ``nvidia/<library>/include``, where only the distribution's name
    tells the version. Wheels of another CUDA version (the CUDA 11 NVRTC of the test tools, say) are
    left out: their headers would not match PyTorch's libraries.
    """
    path = list(sys.path if search_path is None else search_path)
    found: list[Path] = []

    def add(folder: Path) -> None:
        if folder.is_dir() and folder not in found:
            found.append(folder)

    for dist in importlib.metadata.distributions(path=path):
        name = re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "").lower())
        if not name.startswith("nvidia-"):
            continue
        suffix = re.search(r"-cu(\d+)$", name)
        for file in dist.files or ():
            parts = file.parts
            if len(parts) < 4 or parts[0] != "nvidia" or parts[2] != "include":
                continue
            folder_version = re.fullmatch(r"cu(\d+)", parts[1])
            major = folder_version or suffix
            if major is not None and int(major.group(1)) == cuda_major:
                add(Path(dist.locate_file(Path(*parts[:3]))))
    for entry in path:  # wheels installed without a RECORD (copied site-packages, --target folders)
        add(Path(entry or ".") / "nvidia" / f"cu{cuda_major}" / "include")
    return found


def resolve_math_headers(toolkit_dirs: Iterable[Path], wheel_dirs: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """The wheel folders to add for the math headers the toolkit lacks, and the headers found nowhere."""
    toolkit_dirs, wheel_dirs = list(toolkit_dirs), list(wheel_dirs)
    extra: list[Path] = []
    missing: list[str] = []
    for header in MATH_HEADERS:
        if any((folder / header).is_file() for folder in toolkit_dirs + extra):
            continue
        source = next((folder for folder in wheel_dirs if (folder / header).is_file()), None)
        if source is None:
            missing.append(header)
        else:
            extra.append(source)
    return extra, missing


def missing_headers_message(missing: list[str], cuda_major: int, cuda_home: str | None) -> str:
    """Which headers are missing, where they were looked for and how to get them."""
    libraries = sorted({MATH_HEADERS[header] for header in missing})
    suffix = "" if cuda_major >= 13 else f"-cu{cuda_major}"
    wheels = " ".join(f"nvidia-{library}{suffix}" for library in libraries)
    return (
        f"the CUDA toolkit at {cuda_home} has no {', '.join(missing)}, and no NVIDIA wheel for CUDA "
        f"{cuda_major} (PyTorch's CUDA version) installed beside PyTorch provides them; get them with "
        f"`pip install {wheels}` (the versions your PyTorch depends on) or the toolkit's math libraries, "
        "or point CPATH at a folder that holds them"
    )


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
    header_dirs: list[Path] = []
    if mode != "0":
        if torch.version.cuda is None:
            missing.append(f"PyTorch {torch.__version__} is built without CUDA")
        if cpp_extension.CUDA_HOME is None:
            missing.append("no CUDA toolkit found (set CUDA_HOME)")
        if not missing:
            cuda_major = int(torch.version.cuda.split(".")[0])
            header_dirs, absent = resolve_math_headers(
                toolkit_include_dirs(cpp_extension.CUDA_HOME), nvidia_wheel_include_dirs(cuda_major)
            )
            if absent:
                missing.append(missing_headers_message(absent, cuda_major, cpp_extension.CUDA_HOME))
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

    sources = [
        f"{CSRC}/ops.cpp",
        f"{CSRC}/attention_cpu.cpp",
        f"{CSRC}/dense_cpu.cpp",
        f"{CSRC}/task_pool.cpp",
        f"{CSRC}/cpu_blas.cpp",
    ]
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
    if with_cuda and header_dirs:
        # After the toolkit's own folder (which CUDAExtension appended), so that the wheel only fills in
        # what the toolkit lacks and never shadows its runtime headers.
        _say("math headers from the NVIDIA wheels: " + ", ".join(map(str, header_dirs)))
        module.include_dirs.extend(map(str, header_dirs))

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


# pip and `python -m build` run this file as __main__ too; importing it (the tests do) only defines the helpers.
if __name__ == "__main__":
    ext_modules, cmdclass = _extensions()
    setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPy, **cmdclass})
