"""The CI skip guard (tests/ci_guard.py), run on a throwaway test file in a child pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TESTS = '''
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("no weed binary")

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False
'''
MODULE_SKIP = 'import pytest\npytest.importorskip("no_such_module_kubetune")\n\ndef test_never():\n    pass\n'


def _pytest(tmp_path: Path, ci: str | None, source: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci is not None else {})
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.ci_guard", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_skips_pass_outside_ci(tmp_path, ci):
    result = _pytest(tmp_path, ci, TESTS)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 1 skipped, 1 xfailed" in result.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_skipped_test_fails_under_ci(tmp_path, ci):
    result = _pytest(tmp_path, ci, TESTS)
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed, 1 xfailed" in result.stdout
    assert "test_skips was skipped, and CI=" in result.stdout and "no weed binary" in result.stdout


def test_a_skipped_module_fails_under_ci(tmp_path):
    result = _pytest(tmp_path, "true", MODULE_SKIP)
    assert result.returncode != 0, result.stdout
    assert "no_such_module_kubetune" in result.stdout
