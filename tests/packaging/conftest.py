"""Fixtures of the packaging tests: the wheel built once per session.

tests/packaging has no ``__init__.py`` on purpose: as a package it would be
named ``packaging`` and shadow the PyPI library of that name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The wheel builder lives beside the element tests, which need the same wheel.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from devstack.wheel_build import built_wheel  # noqa: E402


@pytest.fixture(scope="session")
def wheel() -> Path:
    return built_wheel()
