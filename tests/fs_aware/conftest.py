"""Fixtures of the filesystem-aware capture tests: the CLI built from this
checkout, a per-session random marker for stale data, root checks."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cli() -> Path:
    """The ``ironic-snapshot`` debug binary, built once per session."""
    subprocess.run(["cargo", "build", "--locked", "-q", "-p", "snapshot-cli"], cwd=REPO, check=True)
    binary = REPO / "target/debug/ironic-snapshot"
    assert binary.is_file(), f"cargo built no {binary}"
    return binary


@pytest.fixture(scope="session")
def marker() -> bytes:
    """32 random bytes that start every block of stale (deleted) data."""
    return b"STALE-DATA-" + secrets.token_bytes(21)


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: builds filesystems on loop devices and mounts them")
