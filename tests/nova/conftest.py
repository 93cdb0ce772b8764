"""A real Nova cloud whose compute driver is ``ironic_snapshot.IronicDriver`` (``tests.stack.nova``).

Once per test session: the cloud, two projects (``demo`` with member
``alice``, ``other`` with member ``bob``), a bare-metal flavor, a public boot
image, the test disk on a loop device and one fake-hardware node whose root
device is that disk, and a server of alice's on that node (fake deploy,
``--nic none``). After the boot the node is switched to the ``direct`` deploy
interface, whose service steps run in a real ironic-python-agent; the tests
start one per snapshot with :func:`tests.stack.ipa.agent_on_demand`.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional import fixtures
from tests.functional.helpers import Disk
from tests.stack.ironic import host_mac
from tests.stack.nova import NovaCloud, start_nova_cloud

stack_requirements = fixtures.stack_requirements

#: Password of the test users (fixed: nothing to protect on loopback).
PASSWORD = "correct-horse-battery-staple"
#: Where the test-only agent hardware manager lives (see its docstring).
AGENT_PLUGIN = Path(__file__).parent / "agent_plugin"
#: Seconds Ironic waits for an agent in ``service wait``: short, so that the
#: "agent never comes" test fails within a minute.
SERVICE_CALLBACK_TIMEOUT = 45


@dataclasses.dataclass
class Cloud:
    """The Nova cloud and its people, images and server."""

    nova: NovaCloud
    demo_project: str
    other_project: str
    alice: str
    bob: str

    @property
    def keystone(self) -> Any:
        return self.nova.keystone

    @property
    def ironic(self) -> Any:
        return self.nova.ironic

    @property
    def glance(self) -> Any:
        return self.nova.glance

    def env(self, user: str) -> dict[str, str]:
        """``OS_*`` environment of ``admin`` (project admin), ``alice`` or ``bob``."""
        if user == "admin":
            return self.keystone.env("admin", self.keystone.admin_password, project="admin")
        project = {"alice": "demo", "bob": "other"}[user]
        return self.keystone.env(user, PASSWORD, project=project)

    def openstack(self, user: str, *args: str, env: dict[str, str] | None = None,
                  timeout: float = 600) -> subprocess.CompletedProcess:
        """Runs ``openstack ARGS`` as ``user`` (or with ``env``)."""
        return subprocess.run([str(Path(sys.executable).parent / "openstack"), *args],
                              env=env or self.env(user), capture_output=True, text=True,
                              timeout=timeout)

    def openstack_json(self, user: str, *args: str) -> Any:
        """``openstack ARGS -f json`` as ``user``; fails the test on an error."""
        result = self.openstack(user, *args, "-f", "json")
        assert result.returncode == 0, f"openstack {' '.join(args)}: {result.stderr}"
        return json.loads(result.stdout)

    def image(self, image_id: str) -> dict[str, Any] | None:
        """The image record as the admin sees it, or None when it is gone."""
        status, raw = self.glance.request("GET", f"/v2/images/{image_id}")
        if status == 404:
            return None
        assert status == 200, raw
        result: dict[str, Any] = json.loads(raw)
        return result

    def images(self) -> list[dict[str, Any]]:
        """Every image (as the cloud admin)."""
        status, raw = self.glance.request("GET", "/v2/images?limit=1000")
        assert status == 200, raw
        images: list[dict[str, Any]] = json.loads(raw)["images"]
        return images


def _wait(what: str, check: Any, timeout: float, interval: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f} s")
        time.sleep(interval)


@pytest.fixture(scope="session")
def nova_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Disk]:
    """The node's disk on a loop device, for the whole session."""
    from tests.functional.helpers import missing_requirements

    missing = missing_requirements()
    if missing is not None:
        pytest.skip(missing)
    with fixtures.attached_disk(tmp_path_factory.mktemp("nova-disk")) as disk:
        yield disk


@pytest.fixture(scope="session")
def cloud(tmp_path_factory: pytest.TempPathFactory, nova_disk: Disk) -> Iterator[Cloud]:
    """The running Nova cloud with its projects and users (once per session)."""
    started = time.monotonic()
    root = tmp_path_factory.mktemp("nova-cloud")
    with start_nova_cloud(root, ironic_conf={"conductor": {
            "service_callback_timeout": str(SERVICE_CALLBACK_TIMEOUT)}}) as nova:
        keystone = nova.keystone
        demo = keystone.create_project("demo")
        other = keystone.create_project("other")
        alice = keystone.create_user("alice", PASSWORD, project=demo, role="member")
        bob = keystone.create_user("bob", PASSWORD, project=other, role="member")
        cloud = Cloud(nova, demo, other, alice, bob)
        print(f"\nNova cloud up in {time.monotonic() - started:.0f} s", file=sys.stderr)
        yield cloud


@dataclasses.dataclass
class Server:
    """Alice's server on the bare-metal node."""

    id: str
    node: str
    disk: Disk


@pytest.fixture(scope="session")
def server(cloud: Cloud, nova_disk: Disk, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """An ``ACTIVE`` server of alice's on the node, which then has the ``direct`` deploy interface."""
    started = time.monotonic()
    ironic = cloud.ironic
    out = ironic.cli("node", "create", "--driver", "fake-hardware", "--name", "nova-node",
                     "--deploy-interface", "fake", "--resource-class", "baremetal",
                     "--property", f"root_device={json.dumps({'name': nova_disk.device})}",
                     "-f", "json")
    node = json.loads(out)["uuid"]
    ironic.cli("port", "create", host_mac(), "--node", node)
    ironic.cli("node", "manage", node, "--wait", "60")
    ironic.cli("node", "provide", node, "--wait", "60")
    # Nova counts a node's resources only once it has a power state.
    ironic.cli("node", "power", "off", node)

    flavor = cloud.openstack_json(
        "admin", "flavor", "create", "bm", "--ram", "1", "--vcpus", "1",
        # Nova 34 refuses a zero disk to non-admin users.
        "--disk", "1", "--property", "resources:CUSTOM_BAREMETAL=1",
        "--property", "resources:VCPU=0", "--property", "resources:MEMORY_MB=0",
        "--property", "resources:DISK_GB=0", "--public")
    boot_image = tmp_path_factory.mktemp("boot") / "boot.raw"
    boot_image.write_bytes(b"\0" * (1 << 20))
    image = cloud.openstack_json("admin", "image", "create", "boot", "--disk-format", "raw",
                                 "--container-format", "bare", "--public",
                                 "--file", str(boot_image))
    # nova-compute reports the node every update_resources_interval; the
    # API shows it (and the scheduler uses it) once its host is mapped.
    def node_reported() -> bool:
        cloud.nova.discover_hosts()
        return node in cloud.openstack("admin", "hypervisor", "list", "-f", "value",
                                       "-c", "Hypervisor Hostname").stdout

    _wait("the node did not appear as a hypervisor", node_reported, timeout=240, interval=5)
    result = cloud.openstack("alice", "server", "create", "--flavor", flavor["id"], "--image",
                             image["id"], "--nic", "none", "--wait", "snapshot-me",
                             "-f", "json", timeout=600)
    assert result.returncode == 0, (f"server create: {result.stderr}\n"
                                    f"{cloud.nova.nova_log('compute')}")
    server_id = json.loads(result.stdout)["id"]
    record = ironic.node(node)
    assert record["instance_uuid"] == server_id, record
    # The fake deploy leaves the node off: power it on, or Nova's power sync
    # would stop the server.
    ironic.cli("node", "power", "on", node)
    # Snapshots run in the agent: the direct deploy interface.
    ironic.cli("node", "maintenance", "set", node)
    ironic.cli("node", "set", node, "--deploy-interface", "direct")
    ironic.cli("node", "maintenance", "unset", node)
    print(f"\nServer {server_id} active on node {node} in {time.monotonic() - started:.0f} s",
          file=sys.stderr)
    return Server(server_id, node, nova_disk)
