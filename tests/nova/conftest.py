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
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional import fixtures
from tests.functional.helpers import Disk
from tests.stack.ironic import host_mac
from tests.stack.nova import NovaCloud, phase, start_nova_cloud

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
    #: The bare-metal node (enrolled before nova-compute started).
    node: str

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

    def compute(self, method: str, path: str, body: object | None = None, *,
                token: str | None = None) -> Any:
        """One request to nova-api (latest microversion) as the cloud admin; the JSON body."""
        return _rest(self.nova.compute_endpoint + path, method, body,
                     token or self.keystone.admin_project_token(),
                     {"OpenStack-API-Version": "compute latest"})

    def placement(self, path: str) -> Any:
        """A GET of Placement as the cloud admin; the JSON body."""
        return _rest(self.nova.placement_endpoint + path, "GET", None,
                     self.keystone.admin_project_token(),
                     {"OpenStack-API-Version": "placement latest"})

    def server(self, server_id: str) -> dict[str, Any]:
        """The server record as the cloud admin sees it."""
        record: dict[str, Any] = self.compute("GET", f"/servers/{server_id}")["server"]
        return record

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


def _rest(url: str, method: str, body: object | None, token: str,
          headers: dict[str, str]) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "Accept": "application/json",
        "X-Auth-Token": token, **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        raise AssertionError(f"{method} {url}: HTTP {err.code}: {err.read()[:1000]!r}") from err
    return json.loads(raw) if raw else None


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


def _enroll_node(ironic: Any, disk: Disk) -> str:
    """A fake-hardware node whose root device is ``disk``, ``available`` and powered off."""
    node: str = ironic.api("POST", "/v1/nodes", {
        "driver": "fake-hardware", "name": "nova-node", "deploy_interface": "fake",
        "resource_class": "baremetal",
        # BIOS: a whole-disk image deployed in UEFI mode makes the agent
        # install a boot entry (efibootmgr) on the machine it runs on.
        "properties": {"root_device": {"name": disk.device}, "capabilities": "boot_mode:bios"},
        # The agent's own power off at the end of a deploy would power off
        # the machine it runs on, this one: power off out of band (fake).
        "driver_info": {"deploy_forces_oob_reboot": True}})["uuid"]
    ironic.api("POST", "/v1/ports", {"address": host_mac(), "node_uuid": node})
    for target, state in (("manage", "manageable"), ("provide", "available")):
        ironic.api("PUT", f"/v1/nodes/{node}/states/provision", {"target": target})
        ironic.wait_for_state(node, state, timeout=60)
    # Nova counts a node's resources only once it has a power state.
    _power(ironic, node, "power off")
    return node


def _power(ironic: Any, node: str, state: str) -> None:
    ironic.api("PUT", f"/v1/nodes/{node}/states/power", {"target": state})
    _wait(f"node {node} did not reach {state}",
          lambda: ironic.node(node)["power_state"] == state, timeout=60, interval=0.3)


@pytest.fixture(scope="session")
def cloud(tmp_path_factory: pytest.TempPathFactory, nova_disk: Disk) -> Iterator[Cloud]:
    """The running Nova cloud with its projects, users and node (once per session)."""
    started = time.monotonic()
    root = tmp_path_factory.mktemp("nova-cloud")
    nodes: list[str] = []
    with start_nova_cloud(root, ironic_conf={"conductor": {
            "service_callback_timeout": str(SERVICE_CALLBACK_TIMEOUT)}},
            # Shelving offloads at once (the node goes back to the pool).
            compute_conf={"DEFAULT": {"shelved_offload_time": "0"}},
            before_compute=lambda ironic: nodes.append(_enroll_node(ironic, nova_disk))) as nova:
        keystone = nova.keystone
        demo = keystone.create_project("demo")
        other = keystone.create_project("other")
        alice = keystone.create_user("alice", PASSWORD, project=demo, role="member")
        bob = keystone.create_user("bob", PASSWORD, project=other, role="member")
        cloud = Cloud(nova, demo, other, alice, bob, nodes[0])
        print(f"\nNova cloud up in {time.monotonic() - started:.0f} s", file=sys.stderr)
        yield cloud


@dataclasses.dataclass
class Server:
    """Alice's server on the bare-metal node."""

    id: str
    node: str
    disk: Disk


@pytest.fixture(scope="session")
def server(cloud: Cloud, nova_disk: Disk) -> Server:
    """An ``ACTIVE`` server of alice's on the node, which then has the ``direct`` deploy interface."""
    started = time.monotonic()
    ironic = cloud.ironic
    node = cloud.node
    flavor = cloud.compute("POST", "/flavors", {"flavor": {
        "name": "bm", "ram": 1, "vcpus": 1,
        # Nova 34 refuses a zero disk to non-admin users.
        "disk": 1, "os-flavor-access:is_public": True}})["flavor"]
    cloud.compute("POST", f"/flavors/{flavor['id']}/os-extra_specs", {"extra_specs": {
        "resources:CUSTOM_BAREMETAL": "1", "resources:VCPU": "0",
        "resources:MEMORY_MB": "0", "resources:DISK_GB": "0"}})
    status, raw = cloud.glance.request("POST", "/v2/images", {
        "name": "boot", "disk_format": "raw", "container_format": "bare",
        "visibility": "public"})
    assert status == 201, raw
    image = json.loads(raw)
    assert cloud.glance.upload(image["id"], b"\0" * (1 << 20)) == 204
    phase("flavor and boot image created")

    # nova-compute reported the node at its start; the scheduler maps its
    # host to the cell (every 2 s) and can then place servers on it.
    def node_schedulable() -> bool:
        hypervisors = cloud.compute("GET", "/os-hypervisors")["hypervisors"]
        return (any(h["hypervisor_hostname"] == node for h in hypervisors)
                and bool(cloud.nova.query(cloud.nova.api_database,
                                          "SELECT host FROM host_mappings")))

    _wait("the node did not appear as a schedulable hypervisor", node_schedulable,
          timeout=240, interval=1)
    phase("node is a hypervisor")
    result = cloud.openstack("alice", "server", "create", "--flavor", flavor["id"], "--image",
                             image["id"], "--nic", "none", "--wait", "snapshot-me",
                             "-f", "json", timeout=600)
    assert result.returncode == 0, (f"server create: {result.stderr}\n"
                                    f"{cloud.nova.nova_log('compute')}")
    server_id = json.loads(result.stdout)["id"]
    phase("server active")
    record = ironic.node(node)
    assert record["instance_uuid"] == server_id, record
    # The fake deploy leaves the node off: power it on, or Nova's power sync
    # would stop the server.
    _power(ironic, node, "power on")
    # Snapshots run in the agent: the direct deploy interface.
    ironic.api("PUT", f"/v1/nodes/{node}/maintenance", {"reason": "deploy interface"})
    ironic.api("PATCH", f"/v1/nodes/{node}",
               [{"op": "replace", "path": "/deploy_interface", "value": "direct"}])
    ironic.api("DELETE", f"/v1/nodes/{node}/maintenance")
    print(f"\nServer {server_id} active on node {node} in {time.monotonic() - started:.0f} s",
          file=sys.stderr)
    return Server(server_id, node, nova_disk)
