"""Fixtures of the real-stack tests of the ``snapshot_disk`` service step.

Per module: a disk (a GPT disk image file with an ext4 filesystem holding
files, on a loop device), a Glance (gunicorn, sqlite, file store) and an
Ironic all-in-one with one fake-hardware node in ``active`` whose root device
hint names the loop device. Per step run: a fresh ironic-python-agent process
(see :func:`helpers.run_service_step`). Everything binds 127.0.0.1 on free
ports and is torn down by the fixtures, loop devices included.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.stack.glance import GlanceServer, start_glance
from tests.stack.ironic import IronicServer, host_mac, start_ironic

from .helpers import Disk, build_disk, missing_requirements, run

_MISSING = missing_requirements()


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    """Skips, saying why, on a machine that cannot run the real stack."""
    if _MISSING is not None:
        pytest.skip(_MISSING)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Disk]:
    """The test disk on a loop device, detached at the end of the module."""
    folder = tmp_path_factory.mktemp("disk")
    image, offset, size, files = build_disk(folder)
    device = run("losetup", "--find", "--show", str(image)).strip()
    try:
        yield Disk(image=image, device=device, part_offset=offset, part_size=size, files=files)
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


@pytest.fixture(scope="module")
def glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceServer]:
    """A Glance without authentication, for the module."""
    with start_glance(tmp_path_factory.mktemp("glance")) as server:
        yield server


@pytest.fixture(scope="module")
def ironic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IronicServer]:
    """An Ironic all-in-one, for the module."""
    with start_ironic(tmp_path_factory.mktemp("ironic")) as server:
        yield server


@pytest.fixture(scope="module")
def node(ironic: IronicServer, disk: Disk) -> str:
    """An ``active`` fake-hardware node whose root device is the test disk."""
    return ironic.create_active_node("snap-node", mac=host_mac(), root_device=disk.device)
