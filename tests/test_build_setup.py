"""setup.py's search for the CUDA math headers: a toolkit without cuSPARSE/cuBLAS/cuSOLVER headers is
completed from the NVIDIA wheels of PyTorch's CUDA major version, never from another version's wheels,
and a clear message names what is missing when nothing provides them."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADERS = ("cusparse.h", "cublas_v2.h", "cublasLt.h", "cusolverDn.h")


@pytest.fixture(scope="module")
def setup_module():
    """setup.py imported as a module: defines its helpers, runs no build."""
    spec = importlib.util.spec_from_file_location("powerbert_setup_script", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install_wheel(site: Path, name: str, version: str, files: dict[str, str]) -> None:
    """A wheel as pip leaves it: its files plus a dist-info folder whose RECORD lists them."""
    for relative, text in files.items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_text(text)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text("".join(f"{relative},,\n" for relative in files))


def toolkit(root: Path, headers=()) -> Path:
    """A CUDA toolkit folder with the runtime header and the given math headers."""
    include = root / "cuda" / "include"
    include.mkdir(parents=True)
    for header in ("cuda_runtime_api.h", *headers):
        (include / header).write_text("// toolkit\n")
    return root / "cuda"


def test_setup_py_builds_nothing_when_imported(setup_module):
    assert callable(setup_module.resolve_math_headers)
    assert set(setup_module.MATH_HEADERS) == set(HEADERS)


def test_cuda13_wheel_fills_in_what_the_toolkit_lacks(setup_module, tmp_path):
    site = tmp_path / "site"
    install_wheel(site, "nvidia-cusparse", "12.6.3", {"nvidia/cu13/include/cusparse.h": "// 13"})
    install_wheel(
        site,
        "nvidia-cublas",
        "13.0.0",
        {"nvidia/cu13/include/cublas_v2.h": "// 13", "nvidia/cu13/include/cublasLt.h": "// 13"},
    )
    install_wheel(site, "nvidia-cusolver", "12.0.3", {"nvidia/cu13/include/cusolverDn.h": "// 13"})
    # CUDA 11 wheels beside them (the compile-check tools): never used for a CUDA 13 build.
    install_wheel(
        site,
        "nvidia-cusparse-cu11",
        "11.7.5",
        {"nvidia/cusparse/include/cusparse.h": "// 11", "nvidia/cublas/include/cublas_v2.h": "// 11"},
    )
    cuda_home = toolkit(tmp_path)

    wheel_dirs = setup_module.nvidia_wheel_include_dirs(13, [str(site)])
    assert wheel_dirs == [site / "nvidia" / "cu13" / "include"]
    toolkit_dirs = setup_module.toolkit_include_dirs(str(cuda_home), environ={})
    extra, missing = setup_module.resolve_math_headers(toolkit_dirs, wheel_dirs)
    assert (extra, missing) == ([site / "nvidia" / "cu13" / "include"], [])

    cu11 = setup_module.nvidia_wheel_include_dirs(11, [str(site)])
    assert set(cu11) == {site / "nvidia" / "cusparse" / "include", site / "nvidia" / "cublas" / "include"}
    assert setup_module.nvidia_wheel_include_dirs(12, [str(site)]) == []


def test_cuda12_wheels_are_told_apart_by_their_names(setup_module, tmp_path):
    site = tmp_path / "site"
    for library, headers in (("cusparse", ["cusparse.h"]), ("cublas", ["cublas_v2.h", "cublasLt.h"])):
        install_wheel(
            site, f"nvidia-{library}-cu12", "12.4.1", {f"nvidia/{library}/include/{h}": "// 12" for h in headers}
        )
    cuda_home = toolkit(tmp_path, headers=["cusolverDn.h"])
    wheel_dirs = setup_module.nvidia_wheel_include_dirs(12, [str(site)])
    extra, missing = setup_module.resolve_math_headers(
        setup_module.toolkit_include_dirs(str(cuda_home), environ={}), wheel_dirs
    )
    assert missing == []
    assert extra == [site / "nvidia" / "cusparse" / "include", site / "nvidia" / "cublas" / "include"]


def test_a_complete_toolkit_or_cpath_needs_no_wheel(setup_module, tmp_path):
    site = tmp_path / "site"
    install_wheel(site, "nvidia-cublas", "13.0.0", {f"nvidia/cu13/include/{h}": "// 13" for h in HEADERS})
    wheel_dirs = setup_module.nvidia_wheel_include_dirs(13, [str(site)])
    full = toolkit(tmp_path / "full", headers=HEADERS)
    assert setup_module.resolve_math_headers(setup_module.toolkit_include_dirs(str(full), environ={}), wheel_dirs) == (
        [],
        [],
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for header in HEADERS:
        (elsewhere / header).write_text("// CPATH\n")
    slim = toolkit(tmp_path / "slim")
    dirs = setup_module.toolkit_include_dirs(str(slim), environ={"CPATH": f"{tmp_path / 'nowhere'}:{elsewhere}"})
    assert elsewhere in dirs
    assert setup_module.resolve_math_headers(dirs, wheel_dirs) == ([], [])


def test_wheel_folder_without_a_record_is_found_by_its_path(setup_module, tmp_path):
    include = tmp_path / "target" / "nvidia" / "cu13" / "include"
    include.mkdir(parents=True)
    (include / "cusparse.h").write_text("// 13\n")
    assert setup_module.nvidia_wheel_include_dirs(13, [str(tmp_path / "target")]) == [include]
    assert setup_module.nvidia_wheel_include_dirs(12, [str(tmp_path / "target")]) == []


@pytest.mark.parametrize(("major", "wheels"), [(13, "nvidia-cublas nvidia-cusparse"), (12, "nvidia-cublas-cu12")])
def test_missing_headers_are_named_with_what_provides_them(setup_module, tmp_path, major, wheels):
    cuda_home = toolkit(tmp_path, headers=["cusolverDn.h"] + ([] if major == 13 else ["cusparse.h"]))
    site = tmp_path / "site"
    install_wheel(site, "nvidia-cusparse-cu11", "11.7.5", {"nvidia/cusparse/include/cusparse.h": "// 11"})
    extra, missing = setup_module.resolve_math_headers(
        setup_module.toolkit_include_dirs(str(cuda_home), environ={}),
        setup_module.nvidia_wheel_include_dirs(major, [str(site)]),
    )
    assert extra == []
    expected = ["cusparse.h", "cublas_v2.h", "cublasLt.h"] if major == 13 else ["cublas_v2.h", "cublasLt.h"]
    assert missing == expected
    message = setup_module.missing_headers_message(missing, major, str(cuda_home))
    assert str(cuda_home) in message and f"CUDA {major}" in message
    assert ", ".join(expected) in message
    assert f"pip install {wheels}" in message and "CPATH" in message


def test_build_setuptools_pin_is_the_same_everywhere():
    """pyproject's [build-system], the Makefile and the README's manual install pin one setuptools range,
    which admits no release PyTorch 2.11 refuses (82 and newer)."""
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pin = next(r for r in build if Requirement(r).name == "setuptools")
    specifier = Requirement(pin).specifier
    assert not specifier.contains("82.0.0") and specifier.contains("81.0.0") and not specifier.contains("76.1.0")
    makefile = (ROOT / "Makefile").read_text()
    assert f"SETUPTOOLS ?= {pin}" in makefile and '"$(SETUPTOOLS)"' in makefile
    assert f'"{pin}"' in (ROOT / "README.md").read_text()


@pytest.fixture
def cuda_torch(monkeypatch, tmp_path):
    """This PyTorch made to look like a CUDA 13 build beside a slim toolkit (no math headers)."""
    import torch
    from torch.utils import cpp_extension

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: setup.py builds no extension at all")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(toolkit(tmp_path)))
    for variable in ("CPATH", "CPLUS_INCLUDE_PATH", "C_INCLUDE_PATH", "POWERBERT_NO_EXT"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


def test_the_extension_gets_the_wheel_headers_after_the_toolkits(setup_module, cuda_torch, monkeypatch, capsys):
    site = cuda_torch / "site"
    install_wheel(site, "nvidia-cublas", "13.0.0", {f"nvidia/cu13/include/{h}": "// 13" for h in HEADERS})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("POWERBERT_CUDA", "1")
    (module,), commands = setup_module._extensions()
    dirs = module.include_dirs
    wheel = str(site / "nvidia" / "cu13" / "include")
    assert dirs[-1] == wheel and dirs.index(str(cuda_torch / "cuda" / "include")) < dirs.index(wheel)
    assert ("POWERBERT_WITH_CUDA", "1") in module.define_macros
    assert f"math headers from the NVIDIA wheels: {wheel}" in capsys.readouterr().err


def test_missing_headers_stop_a_required_cuda_build_and_skip_an_optional_one(
    setup_module, cuda_torch, monkeypatch, capsys
):
    monkeypatch.setenv("POWERBERT_CUDA", "1")
    with pytest.raises(
        SystemExit, match=r"POWERBERT_CUDA=1 but the CUDA kernels cannot be built: .*has no cusparse\.h"
    ):
        setup_module._extensions()
    monkeypatch.setenv("POWERBERT_CUDA", "auto")
    (module,), _ = setup_module._extensions()
    assert ("POWERBERT_WITH_CUDA", "0") in module.define_macros
    assert "C++ CPU kernels only (no CUDA kernels: the CUDA toolkit at" in capsys.readouterr().err
