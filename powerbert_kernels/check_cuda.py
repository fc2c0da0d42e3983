"""``powerbert check-cuda``: compile every CUDA kernel of the extension for chosen GPU architectures.

No GPU is needed. Each architecture is compiled to machine code with the first toolchain that supports
it:

1. the machine's ``nvcc`` (``$CUDA_HOME/bin/nvcc`` or ``nvcc`` on PATH): a full compile of
   ``check_kernels.cu``, host launchers included (CUDA 13 covers sm_75 and newer);
2. NVRTC and ``ptxas`` of CUDA 11.8 from the PyPI packages ``nvidia-cuda-nvrtc-cu11`` and
   ``nvidia-cuda-nvcc-cu11`` (the last toolkit with Kepler sm_35/sm_37, Maxwell and Pascal): NVRTC
   compiles the device code to PTX for ``compute_XX``, ptxas turns it into ``sm_XX`` machine code.

One line per architecture: ``sm_37: ok``, or the compiler's error; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HELP = "Compile every CUDA kernel of the extension for the given GPU architectures (no GPU needed)."

DEFAULT_ARCHS = "37,60,75,80,90"
SOURCE_NAME = "check_kernels.cu"
_ENTRY = re.compile(r"Compiling entry function '([^']+)'")


class CompileError(RuntimeError):
    """A toolchain failed (or is missing) for one architecture; the message is the compiler's output."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch",
        default=DEFAULT_ARCHS,
        help=f"comma-separated compute capabilities, e.g. 37,60,75 or 3.7,6.0 (default: {DEFAULT_ARCHS})",
    )
    parser.add_argument("--nvcc", default=None, help="nvcc to use (default: $CUDA_HOME/bin/nvcc, else nvcc on PATH)")
    parser.add_argument(
        "--source",
        default=None,
        help=f"folder holding {SOURCE_NAME} and powerbert/ (default: the copy installed with the package, "
        "else the source checkout's csrc/)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say which toolchain compiled each architecture and list its kernels' registers",
    )


def parse_archs(text: str) -> list[int]:
    """``"37,6.0, 90"`` -> ``[37, 60, 90]``."""
    archs = []
    for item in text.replace(";", ",").split(","):
        item = item.strip().lower().removeprefix("sm_").removeprefix("compute_")
        if not item:
            continue
        digits = item.replace(".", "")
        if not digits.isdigit() or len(digits) < 2:
            raise ValueError(f"--arch: {item!r} is not a compute capability such as 37 or 8.0")
        archs.append(int(digits))
    if not archs:
        raise ValueError("--arch: no architecture given")
    return archs


def find_source_dir(explicit: str | None = None) -> Path:
    """The folder with ``check_kernels.cu``: the argument, the package's copy, or the checkout's csrc/."""
    here = Path(__file__).resolve().parent
    candidates = [Path(explicit)] if explicit else [here / "ext" / "csrc", here.parent / "csrc"]
    for folder in candidates:
        if (folder / SOURCE_NAME).is_file():
            return folder
    raise FileNotFoundError(
        f"{SOURCE_NAME} not found in {', '.join(str(c) for c in candidates)}; pass --source with the csrc folder"
    )


@dataclass
class Result:
    tool: str
    kernels: list[str]
    report: str


# ---------------------------------------------------------------------------------------------------
# nvcc
# ---------------------------------------------------------------------------------------------------


def find_nvcc(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").is_file():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def nvcc_archs(nvcc: str) -> tuple[str, set[int]]:
    """nvcc's release (e.g. ``"13.0"``) and the real architectures it can compile for."""
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    match = re.search(r"release (\d+\.\d+)", version.stdout)
    listed = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, timeout=60)
    archs = {int(m) for m in re.findall(r"sm_(\d+)", listed.stdout)} if listed.returncode == 0 else set()
    return (match.group(1) if match else "unknown"), archs


def compile_nvcc(nvcc: str, release: str, source_dir: Path, arch: int, workdir: Path) -> Result:
    command = [
        nvcc,
        "-std=c++17",
        "-O3",
        "-c",
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        "-Xptxas=-v",
        "-Wno-deprecated-gpu-targets",
        f"-I{source_dir}",
        "-o",
        str(workdir / f"check_sm_{arch}.o"),
        str(source_dir / SOURCE_NAME),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise CompileError(f"nvcc {release} failed:\n{output}")
    return Result(f"nvcc {release}", _ENTRY.findall(output), output)


# ---------------------------------------------------------------------------------------------------
# NVRTC + ptxas of CUDA 11.8 (PyPI packages)
# ---------------------------------------------------------------------------------------------------


def _package_dir(module: str) -> Path | None:
    try:
        package = __import__(module, fromlist=["__path__"])
    except ImportError:
        return None
    paths = list(getattr(package, "__path__", []))
    return Path(paths[0]) if paths else None


@contextlib.contextmanager
def _thread_locale_kept() -> Iterator[None]:
    """Restore the calling thread's C locale afterwards: NVRTC switches it (uselocale) and leaves it
    switched, which would turn Python's preferred encoding into ASCII for the rest of the process."""
    try:
        libc = ctypes.CDLL(None)
        libc.uselocale.restype = ctypes.c_void_p
        libc.uselocale.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        yield
        return
    saved = libc.uselocale(None)  # NULL: query without changing
    try:
        yield
    finally:
        libc.uselocale(saved)


class Nvrtc:
    """NVRTC 11.x through ctypes (the nvidia-cuda-nvrtc-cu11 package ships the library, not bindings)."""

    def __init__(self) -> None:
        root = _package_dir("nvidia.cuda_nvrtc")
        libs = sorted((root / "lib").glob("libnvrtc.so.11*")) if root else []
        if not libs:
            raise CompileError("NVRTC 11 not found: `pip install nvidia-cuda-nvrtc-cu11 nvidia-cuda-nvcc-cu11`")
        # libnvrtc loads its builtins library by name: load it first from the same folder (a loaded library
        # is found by its soname; RTLD_LOCAL keeps its symbols out of the rest of the process).
        for builtins in sorted((root / "lib").glob("libnvrtc-builtins.so.11*")):
            ctypes.CDLL(str(builtins))
        self.lib = ctypes.CDLL(str(libs[-1]))
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        self.version = f"{major.value}.{minor.value}"
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        count = ctypes.c_int()
        self.archs: set[int] = set()
        if self.lib.nvrtcGetNumSupportedArchs(ctypes.byref(count)) == 0:
            values = (ctypes.c_int * count.value)()
            if self.lib.nvrtcGetSupportedArchs(values) == 0:
                self.archs = set(values)

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise CompileError(f"NVRTC {self.version}: {what} failed: {self.lib.nvrtcGetErrorString(status).decode()}")

    def ptx(self, source: bytes, name: str, options: list[str]) -> str:
        with _thread_locale_kept():
            return self._ptx(source, name, options)

    def _ptx(self, source: bytes, name: str, options: list[str]) -> str:
        program = ctypes.c_void_p()
        self._check(
            self.lib.nvrtcCreateProgram(ctypes.byref(program), source, name.encode(), 0, None, None),
            "nvrtcCreateProgram",
        )
        try:
            encoded = [o.encode() for o in options]
            status = self.lib.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
            size = ctypes.c_size_t()
            self.lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetProgramLog(program, log)
            if status != 0:
                raise CompileError(f"NVRTC {self.version} failed:\n{log.value.decode(errors='replace').strip()}")
            self._check(self.lib.nvrtcGetPTXSize(program, ctypes.byref(size)), "nvrtcGetPTXSize")
            buffer = ctypes.create_string_buffer(size.value)
            self._check(self.lib.nvrtcGetPTX(program, buffer), "nvrtcGetPTX")
            return buffer.value.decode()
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(program))


def find_ptxas11() -> tuple[str, str]:
    """The ptxas of the nvidia-cuda-nvcc-cu11 package and its release."""
    root = _package_dir("nvidia.cuda_nvcc")
    ptxas = root / "bin" / "ptxas" if root else None
    if ptxas is None or not ptxas.is_file():
        raise CompileError("ptxas of CUDA 11 not found: `pip install nvidia-cuda-nvcc-cu11`")
    if not os.access(ptxas, os.X_OK):
        raise CompileError(f"{ptxas} is not executable (chmod +x it)")
    version = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True, timeout=60).stdout
    match = re.search(r"release (\d+\.\d+)", version)
    release = match.group(1) if match else "unknown"
    if not release.startswith("11."):
        raise CompileError(f"{ptxas} is from CUDA {release}, not 11 (another nvidia-cuda-nvcc package replaced it)")
    return str(ptxas), release


def compile_nvrtc(nvrtc: Nvrtc, ptxas: str, ptxas_release: str, source_dir: Path, arch: int, workdir: Path) -> Result:
    source = (source_dir / SOURCE_NAME).read_bytes()
    ptx = nvrtc.ptx(
        source, SOURCE_NAME, [f"--gpu-architecture=compute_{arch}", "--std=c++17", f"--include-path={source_dir}"]
    )
    ptx_path = workdir / f"check_sm_{arch}.ptx"
    ptx_path.write_text(ptx)
    command = [ptxas, f"-arch=sm_{arch}", "-O3", "-v", "-o", str(workdir / f"check_sm_{arch}.cubin"), str(ptx_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise CompileError(f"ptxas {ptxas_release} failed:\n{output}")
    return Result(f"NVRTC {nvrtc.version} + ptxas {ptxas_release}", _ENTRY.findall(output), output)


# ---------------------------------------------------------------------------------------------------


class Toolchains:
    """Picks, per architecture, the first toolchain that supports it (loaded lazily, errors kept)."""

    def __init__(self, nvcc: str | None, source_dir: Path, workdir: Path) -> None:
        self.source_dir = source_dir
        self.workdir = workdir
        self.nvcc = find_nvcc(nvcc)
        self.nvcc_release, self.nvcc_supported = nvcc_archs(self.nvcc) if self.nvcc else ("", set())
        self._nvrtc: tuple[Nvrtc, str, str] | None = None
        self._nvrtc_error: str | None = None

    def _load_nvrtc(self) -> tuple[Nvrtc, str, str]:
        if self._nvrtc is None and self._nvrtc_error is None:
            try:
                nvrtc = Nvrtc()
                self._nvrtc = (nvrtc, *find_ptxas11())
            except (CompileError, OSError) as exc:
                self._nvrtc_error = str(exc)
        if self._nvrtc is None:
            raise CompileError(self._nvrtc_error or "NVRTC 11 is not usable")
        return self._nvrtc

    def compile(self, arch: int) -> Result:
        if self.nvcc and arch in self.nvcc_supported:
            return compile_nvcc(self.nvcc, self.nvcc_release, self.source_dir, arch, self.workdir)
        where = f"the machine's nvcc ({self.nvcc_release}) does not support sm_{arch}" if self.nvcc else "no nvcc found"
        try:
            nvrtc, ptxas, release = self._load_nvrtc()
        except CompileError as exc:
            raise CompileError(f"no compiler for sm_{arch}: {where}, and {exc}") from None
        if nvrtc.archs and arch not in nvrtc.archs:
            raise CompileError(
                f"no compiler for sm_{arch}: {where}, and NVRTC {nvrtc.version} supports only "
                + ", ".join(f"sm_{a}" for a in sorted(nvrtc.archs))
            )
        return compile_nvrtc(nvrtc, ptxas, release, self.source_dir, arch, self.workdir)


def kernel_usage(report: str) -> list[tuple[str, str]]:
    """(kernel, "N registers, S bytes spilled") for each kernel in a ``ptxas -v`` report."""
    usage: dict[str, list[str]] = {}
    current = None
    for line in report.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            current = entry.group(1)
            usage[current] = []
            continue
        registers = re.search(r"Used (\d+) registers", line)
        spills = re.search(r"(\d+) bytes spill stores", line)
        if current is not None and registers:
            usage[current].append(f"{registers.group(1)} registers")
        if current is not None and spills:
            usage[current].append(f"{spills.group(1)} bytes spilled")
    names = list(usage)
    if names and shutil.which("c++filt"):
        demangled = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
        if len(demangled.splitlines()) == len(names):
            return [(new, ", ".join(usage[old])) for old, new in zip(names, demangled.splitlines(), strict=True)]
    return [(name, ", ".join(usage[name])) for name in names]


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def run(args: argparse.Namespace) -> int:
    archs = parse_archs(args.arch)
    source_dir = find_source_dir(args.source)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="powerbert-check-cuda-") as tmp:
        toolchains = Toolchains(args.nvcc, source_dir, Path(tmp))
        for arch in archs:
            try:
                result = toolchains.compile(arch)
            except (CompileError, OSError, subprocess.SubprocessError) as exc:
                failures += 1
                message = str(exc)
                first, _, rest = message.partition("\n")
                print(f"sm_{arch}: {first}" + (f"\n{_indent(rest)}" if rest else ""), flush=True)
                continue
            print(f"sm_{arch}: ok", flush=True)
            if args.verbose:
                print(f"    {result.tool}: {len(result.kernels)} kernels")
                for kernel, usage in kernel_usage(result.report):
                    print(f"    {kernel}: {usage}")
    return 1 if failures else 0
