"""Fixtures of the filesystem-aware capture tests: a per-session random
marker for stale data, and the root check (the CLI comes from the shared
``cli_binary`` fixture in tests/conftest.py)."""

from __future__ import annotations

import os
import secrets

import pytest


@pytest.fixture(scope="session")
def marker() -> bytes:
    """32 random bytes that start every block of stale (deleted) data."""
    return b"STALE-DATA-" + secrets.token_bytes(21)


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: builds filesystems on loop devices and mounts them")
