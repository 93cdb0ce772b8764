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
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional import fixtures
from tests.functional.helpers import Disk
from tests.stack.glance import GlanceServer, free_port, start_glance
from tests.stack.ipa import Agent, start_ipa
from tests.stack.ironic import IronicServer, host_mac, start_ironic
from tests.stack.keystone import KeystoneServer, start_keystone

# Shared with tests/functional, bound here so that pytest finds them: the
# requirement check (autouse) and the test disk.
stack_requirements = fixtures.stack_requirements
disk = fixtures.disk

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


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """Keystone, Glance and Ironic with Keystone auth, projects and users."""
    root = tmp_path_factory.mktemp("cloud")
    glance_port, ironic_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        keystone = stack.enter_context(start_keystone(root / "keystone"))
        keystone.register_service("image", "glance", f"http://127.0.0.1:{glance_port}")
        keystone.register_service("baremetal", "ironic", f"http://127.0.0.1:{ironic_port}")
        demo = keystone.create_project("demo")
        other = keystone.create_project("other")
        alice = keystone.create_user("alice", PASSWORD, project=demo, role="member")
        bob = keystone.create_user("bob", PASSWORD, project=other, role="member")
        admin_project_token = keystone.password_token("admin", keystone.admin_password,
                                                      project="admin")
        glance = stack.enter_context(start_glance(
            root / "glance", flavor="keystone", port=glance_port, token=admin_project_token,
            extra_conf={"keystone_authtoken": keystone.authtoken_conf(
                # No token cache: a deleted credential must be refused at once.
                "glance", service_type="image", token_cache_time="-1")}))
        ironic = stack.enter_context(start_ironic(
            root / "ironic", port=ironic_port,
            extra_conf={"DEFAULT": {"auth_strategy": "keystone"},
                        "keystone_authtoken": keystone.authtoken_conf(
                            "ironic", service_type="baremetal", token_cache_time="-1")},
            client_env=keystone.env("admin", keystone.admin_password, system=True),
            token=keystone.admin_token))
        yield Cloud(keystone, glance, ironic, demo, other, alice, bob)


@pytest.fixture(scope="module")
def node(cloud: Cloud, disk: Disk) -> str:
    """An ``active`` node owned by project demo whose root device is the test disk."""
    uuid = cloud.ironic.create_active_node("client-node", mac=host_mac(),
                                           root_device=disk.device)
    cloud.ironic.cli("node", "set", uuid, "--owner", cloud.demo_project)
    cloud.ironic.cli("node", "power", "on", uuid)
    return uuid


@dataclasses.dataclass
class AgentWatch:
    """What :func:`agent_on_demand` saw."""

    agents: list[Agent] = dataclasses.field(default_factory=list)
    states: list[str] = dataclasses.field(default_factory=list)
    #: The node records seen while it serviced (admin view).
    service_records: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def agent_log(self) -> str:
        return "\n".join(agent.log() for agent in self.agents)


@contextlib.contextmanager
def agent_on_demand(ironic: IronicServer, node: str, workdir: Path,
                    on_service: Any = None,
                    agent_conf: dict[str, dict[str, str]] | None = None) -> Iterator[AgentWatch]:
    """Starts a fresh agent when ``node`` waits for one; stops it on exit.

    :param on_service: called once with the node record when the node is
        first seen servicing with a step (in the watcher thread).
    :param agent_conf: sections merged into the agent's config file, such as
        the operator's ``[snapshot]`` credential.
    """
    watch = AgentWatch()
    stop = threading.Event()
    contexts: list[Any] = []
    called = False

    def loop() -> None:
        nonlocal called
        while not stop.is_set():
            try:
                record = ironic.node(node)
            except Exception:  # noqa: BLE001 - keep watching through API hiccups
                time.sleep(0.5)
                continue
            state = record["provision_state"]
            if not watch.states or watch.states[-1] != state:
                watch.states.append(state)
            if state in ("service", "service wait") and record.get("service_step"):
                watch.service_records.append(record)
                if on_service is not None and not called:
                    called = True
                    on_service(record)
            if state == "service wait" and not contexts:
                context = start_ipa(workdir, ironic.endpoint, extra_conf=agent_conf)
                watch.agents.append(context.__enter__())
                contexts.append(context)
            time.sleep(0.3)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join(timeout=30)
        for context in contexts:
            context.__exit__(None, None, None)
