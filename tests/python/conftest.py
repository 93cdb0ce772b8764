"""Fixtures of the Python-layer tests: a small disk image with mixed content."""

from __future__ import annotations

import importlib
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

MIB = 1024 * 1024


def _engine_missing() -> str | None:
    try:
        importlib.import_module("ironic_snapshot._engine")
    except ImportError as exc:
        return f"needs the ironic-snapshot package installed in the venv (pip install -e .): {exc}"
    return None


_MISSING = _engine_missing()


@pytest.fixture(autouse=True)
def _engine_required() -> None:
    """Skips, saying why, when the extension is not built and installed."""
    if _MISSING is not None:
        pytest.skip(_MISSING)


@pytest.fixture
def disk_image() -> Iterator[Path]:
    """A 64 MiB sparse disk image: random, text and zero regions, and holes.

    It lives in /dev/shm, away from the tests' outputs under tmp_path, so a
    test's output folder holds only what the capture wrote.
    """
    folder = Path(tempfile.mkdtemp(prefix="ironic-snapshot-py-", dir="/dev/shm"))
    path = folder / "disk.img"
    rng = random.Random(7)
    with open(path, "wb") as handle:
        handle.truncate(64 * MIB)
        handle.seek(1 * MIB)
        handle.write(rng.randbytes(8 * MIB))
        handle.seek(20 * MIB)
        handle.write(b"ironic-snapshot test text\n" * 200_000)
        handle.seek(40 * MIB)
        handle.write(b"\0" * (4 * MIB))
        handle.seek(63 * MIB)
        handle.write(rng.randbytes(MIB))
    try:
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)
