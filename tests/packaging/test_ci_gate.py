"""The CI gate in tests/conftest.py: on CI a skipped test fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SUITE = '''
import pytest

def test_runs():
    assert True

def test_skips():
    pytest.skip("a fixture found no gunicorn")
'''


def run_suite(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a two-test suite (one passes, one skips) under the project's conftest hooks."""
    (tmp_path / "test_suite.py").write_text(SUITE)
    environ = {k: v for k, v in os.environ.items()
               if k not in {"CI", "IRONIC_SNAPSHOT_ALLOW_SKIPS", "PYTEST_ADDOPTS"}}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", os.devnull,
         "--rootdir", str(tmp_path), "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=REPO, env=environ, capture_output=True, text=True, timeout=120)


def test_skip_fails_the_run_on_ci(tmp_path: Path) -> None:
    out = run_suite(tmp_path, CI="true")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "SKIPPED ON CI: " in out.stdout and "test_skips" in out.stdout, out.stdout


def test_skip_is_a_skip_off_ci(tmp_path: Path) -> None:
    out = run_suite(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 1 skipped" in out.stdout, out.stdout
    assert "SKIPPED ON CI" not in out.stdout


def test_skips_allowed_on_purpose(tmp_path: Path) -> None:
    out = run_suite(tmp_path, CI="true", IRONIC_SNAPSHOT_ALLOW_SKIPS="1")
    assert out.returncode == 0, out.stdout + out.stderr
