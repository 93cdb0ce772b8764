"""Fixtures shared by the DevStack plugin tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack.glance import GlanceServer

from .harness import glance_cloud


@pytest.fixture(scope="session")
def glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GlanceServer, Path]]:
    """One real Glance for the session, and the clouds.yaml reaching it."""
    with glance_cloud(tmp_path_factory.mktemp("glance-cloud")) as cloud:
        yield cloud
