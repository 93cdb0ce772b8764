"""Fixtures of the real-stack tests of the ``snapshot_disk`` service step.

Per module: a disk (a GPT disk image file with an ext4 filesystem holding
files, on a loop device), a Glance (gunicorn, sqlite, file store) and an
Ironic all-in-one with one fake-hardware node in ``active`` whose root device
hint names the loop device. Per step run: a fresh ironic-python-agent process
(see :func:`helpers.run_service_step`). Everything binds 127.0.0.1 on free
ports and is torn down by the fixtures, loop devices included.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack.glance import GlanceServer, start_glance
from tests.stack.ironic import IronicServer, host_mac, start_ironic

from . import fixtures
from .helpers import Disk, abort_to_active

# Shared with tests/client, bound here so that pytest finds them: the
# requirement check (autouse) and the test disk.
stack_requirements = fixtures.stack_requirements
disk = fixtures.disk


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


@pytest.fixture(autouse=True)
def node_back_to_active(ironic: IronicServer, node: str) -> Iterator[None]:
    """After each test: a node a failed test left in ``service failed`` is aborted back.

    So that one failing test does not make the next one service a failed node
    (Ironic accepts ``service`` from ``service failed``).
    """
    yield
    if ironic.node(node)["provision_state"] == "service failed":
        abort_to_active(ironic, node)
