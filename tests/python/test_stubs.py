"""The hand-written stub of the extension matches the built extension."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_stubtest_accepts_engine_stub() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "ironic_snapshot._engine"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_reexports_all() -> None:
    import ironic_snapshot

    for name in ironic_snapshot.__all__:
        assert getattr(ironic_snapshot, name) is not None, name
    from ironic_snapshot import _engine

    assert ironic_snapshot.capture is _engine.capture
    assert ironic_snapshot.__version__ == _engine.VERSION


def test_package_type_checks() -> None:
    # The stub is what type checkers see of the engine: the package's own
    # code must type-check against it.
    package = Path(__file__).resolve().parents[2] / "python" / "ironic_snapshot"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-incremental", str(package)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
