"""A Keystone-authenticated cloud on loopback for the snapshot client's tests.

Per module: a real Keystone (fernet, sqlite), a Glance and an Ironic both
behind keystonemiddleware (``[keystone_authtoken] service_type`` set, so
application credential access rules are enforced; Glance's token cache off,
so that a deleted credential is refused at once), a catalog holding both, two
projects (``demo`` owns the node, ``other`` does not) with one member user
each, the test disk on a loop device and an ``active`` fake-hardware node
owned by ``demo`` whose root device is that disk. The agent is started per
snapshot by :func:`agent_on_demand`. Everything binds 127.0.0.1 on free ports.

The agent lists only devices of type ``disk`` as root device candidates, so
the hint never matches a loop device (the step would fail with "No suitable
device"): the tests name the disk with ``--device``, and the hint is there so
that the agent could never pick this machine's own disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional import fixtures
from tests.functional.helpers import Disk
from tests.stack.glance import GlanceServer, free_port
from tests.stack.ipa import AgentWatch, agent_on_demand
from tests.stack.ironic import IronicServer, host_mac
from tests.stack.keystone import KeystoneServer, start_keystone
from tests.stack.protected import keystone_glance, keystone_ironic

# Shared with tests/functional, bound here so that pytest finds them: the
# requirement check (autouse) and the test disk.
stack_requirements = fixtures.stack_requirements
disk = fixtures.disk

__all__ = ["AgentWatch", "Cloud", "PASSWORD", "agent_on_demand", "build_cloud"]

#: Password of the test users (fixed: nothing to protect on loopback).
PASSWORD = "correct-horse-battery-staple"


@dataclasses.dataclass
class Cloud:
    """The running cloud and its people."""

    keystone: KeystoneServer
    glance: GlanceServer
    ironic: IronicServer
    demo_project: str
    other_project: str
    alice: str  # member of demo
    bob: str  # member of other

    def env(self, user: str) -> dict[str, str]:
        """``OS_*`` environment of ``alice`` (project demo) or ``bob`` (project other)."""
        project = {"alice": "demo", "bob": "other"}[user]
        return self.keystone.env(user, PASSWORD, project=project)

    def token(self, user: str) -> str:
        """A project-scoped token of ``alice`` or ``bob``."""
        return self.keystone.password_token(user, PASSWORD,
                                            project={"alice": "demo", "bob": "other"}[user])

    def images(self) -> list[dict[str, Any]]:
        """Every image in Glance (as the cloud admin)."""
        status, raw = self.glance.request("GET", "/v2/images?limit=1000")
        assert status == 200, raw
        import json

        return json.loads(raw)["images"]

    def cli(self, user: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Runs ``openstack ARGS`` as ``user``."""
        return subprocess.run([str(Path(sys.executable).parent / "openstack"), *args],
                              env=self.env(user), capture_output=True, text=True,
                              timeout=timeout)


@contextlib.contextmanager
def build_cloud(root: Path, *, keystone_conf: dict[str, dict[str, str]] | None = None
                ) -> Iterator[Cloud]:
    """Keystone, Glance and Ironic with Keystone auth, projects and users, in ``root``.

    :param keystone_conf: sections merged over Keystone's config (such as a
        short ``[token] expiration``).
    """
    glance_port, ironic_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        keystone = stack.enter_context(start_keystone(root / "keystone",
                                                      extra_conf=keystone_conf))
        keystone.register_service("image", "glance", f"http://127.0.0.1:{glance_port}")
        keystone.register_service("baremetal", "ironic", f"http://127.0.0.1:{ironic_port}")
        demo = keystone.create_project("demo")
        other = keystone.create_project("other")
        alice = keystone.create_user("alice", PASSWORD, project=demo, role="member")
        bob = keystone.create_user("bob", PASSWORD, project=other, role="member")
        glance = stack.enter_context(keystone_glance(keystone, root / "glance", glance_port))
        ironic = stack.enter_context(keystone_ironic(keystone, root / "ironic", ironic_port))
        yield Cloud(keystone, glance, ironic, demo, other, alice, bob)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """Keystone, Glance and Ironic with Keystone auth, projects and users."""
    with build_cloud(tmp_path_factory.mktemp("cloud")) as built:
        yield built


@pytest.fixture(scope="module")
def node(cloud: Cloud, disk: Disk) -> str:
    """An ``active`` node owned by project demo whose root device is the test disk."""
    uuid = cloud.ironic.create_active_node("client-node", mac=host_mac(),
                                           root_device=disk.device)
    cloud.ironic.cli("node", "set", uuid, "--owner", cloud.demo_project)
    cloud.ironic.cli("node", "power", "on", uuid)
    return uuid
