"""Fixtures of every real-stack suite (``tests/functional``, ``tests/client``).

A suite's conftest binds them to its own names so that pytest finds them there.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.blockdev import detach_loop, forget_partitions
from tests.functional.helpers import Disk, build_disk, missing_requirements, run

_MISSING = missing_requirements()


@pytest.fixture(scope="module", autouse=True)
def stack_requirements() -> None:
    """Skips, saying why, on a machine that cannot run the real stack."""
    if _MISSING is not None:
        pytest.skip(_MISSING)


@contextlib.contextmanager
def attached_disk(folder: Path) -> Iterator[Disk]:
    """Builds the test disk in ``folder`` and attaches it to a loop device until the end."""
    image, offset, size, files = build_disk(folder)
    device = run("losetup", "--find", "--show", str(image)).strip()
    try:
        forget_partitions(device)
        yield Disk(image=image, device=device, part_offset=offset, part_size=size, files=files)
    finally:
        # Partitions a tool gave the whole-disk device outlive the detach.
        detach_loop(device)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Disk]:
    """The test disk on a loop device, detached at the end of the module."""
    with attached_disk(tmp_path_factory.mktemp("disk")) as built:
        yield built
