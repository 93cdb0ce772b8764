"""The wheel the ramdisk gets, built once per test session (shared with tests/packaging).

The build is the one .ci/wheel.sh makes (release, zig, manylinux_2_28, same
cargo target folder), so after .ci/wheel.sh has run it is a no-op for cargo.
``IRONIC_SNAPSHOT_TEST_WHEEL`` names an already built wheel to use instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@cache
def built_wheel() -> Path:
    """Path of the abi3 manylinux_2_28 wheel of this checkout."""
    given = os.environ.get("IRONIC_SNAPSHOT_TEST_WHEEL")
    if given:
        path = Path(given)
        assert path.is_file(), f"IRONIC_SNAPSHOT_TEST_WHEEL={given} is not a file"
        return path
    maturin = VENV_BIN / "maturin"
    assert maturin.exists(), "maturin is missing from the test virtualenv: install tests/requirements.txt"
    out = Path(tempfile.mkdtemp(prefix="ironic-snapshot-wheel-"))
    env = dict(
        os.environ,
        PATH=f"{VENV_BIN}:{os.environ['PATH']}",
        CARGO_TARGET_DIR=os.environ.get("CARGO_TARGET_DIR_WHEEL", str(REPO / "target" / "wheel-zig")),
    )
    proc = subprocess.run(
        [str(maturin), "build", "--release", "--locked", "--zig", "--compatibility", "manylinux_2_28",
         "-i", "python3.11", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, f"maturin build failed:\n{proc.stderr[-5000:]}"
    (wheel,) = out.glob("*.whl")
    return wheel


def base_python() -> str:
    """The interpreter the test virtualenv was made from (not the venv)."""
    return getattr(sys, "_base_executable", None) or shutil.which("python3.11") or sys.executable
