"""``openstack server image create`` of a bare-metal server, through a real Nova 34.

nova-compute runs ``ironic_snapshot.IronicDriver`` (loaded through the shim
``nova.virt.ironic_snapshot``), which services the node with ``snapshot_disk``
in a real ironic-python-agent; Glance, Keystone and Ironic check every token.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.client.test_snapshot_command import assert_same_files
from tests.nova.conftest import AGENT_PLUGIN, PASSWORD, Cloud, Server, _wait
from tests.stack.ipa import agent_on_demand

#: The driver's fault message for a user logged in with an application credential.
APP_CREDENTIAL_FAULT = "You are logged in with an application credential"


def _agent_env() -> dict[str, str]:
    # The agent also needs this checkout's package (PYTHONPATH of the tests).
    path = os.pathsep.join(p for p in (str(AGENT_PLUGIN), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


def _server(cloud: Cloud, server: Server) -> dict[str, Any]:
    record: dict[str, Any] = cloud.openstack_json("admin", "server", "show", server.id)
    return record


def _faults(cloud: Cloud, server: Server) -> list[tuple[str, str]]:
    """The instance's faults (message, details) from Nova's cell database, oldest first."""
    rows = cloud.nova.cell_query("SELECT message, details FROM instance_faults "
                                 "WHERE instance_uuid = :uuid ORDER BY id", uuid=server.id)
    return [(message or "", details or "") for message, details in rows]


def _wait_task_done(cloud: Cloud, server: Server, timeout: float = 300) -> dict[str, Any]:
    """Waits until the server has no task state any more; returns it."""
    def done() -> dict[str, Any] | None:
        record = _server(cloud, server)
        return record if not record.get("OS-EXT-STS:task_state") else None

    result: dict[str, Any] = _wait(f"server {server.id} still has a task", done, timeout)
    return result


def _assert_node_back(cloud: Cloud, server: Server) -> None:
    record = cloud.ironic.wait_for_state(server.node, "active", timeout=120)
    assert record["power_state"] == "power on", record
    assert not record.get("maintenance"), record
    assert record["instance_uuid"] == server.id


def _app_credentials(cloud: Cloud, user_id: str) -> list[dict[str, Any]]:
    return [item for item in cloud.keystone.application_credentials(user_id)
            if item["name"].startswith("ironic-snapshot-")]


def test_server_image_create_snapshots_the_node(cloud: Cloud, server: Server,
                                                tmp_path: Path) -> None:
    before = server.disk.sha256()
    started = time.monotonic()
    with agent_on_demand(cloud.ironic, server.node, tmp_path / "ipa",
                         agent_env=_agent_env()) as watch:
        result = cloud.openstack("alice", "server", "image", "create", "--name", "snap-1",
                                 "--wait", server.id, "-f", "json", timeout=900)
        elapsed = time.monotonic() - started
        # --wait returns once the image is active, which the agent's upload
        # makes it before the step has recorded its report and returned: the
        # agent (the node's ramdisk) must live until the node is back, as
        # a real one does, or the step dies half-done.
        if result.returncode == 0:
            record = _wait_task_done(cloud, server)
    assert result.returncode == 0, (f"{result.stderr}\n--- compute ---\n"
                                    f"{cloud.nova.nova_log('compute')}\n--- agent ---\n"
                                    f"{watch.agent_log()[-3000:]}")
    image_id = json.loads(result.stdout)["id"]
    print(f"\nserver image create --wait took {elapsed:.0f} s")
    assert "service wait" in watch.states and watch.agents, watch.states

    image = cloud.image(image_id)
    assert image is not None and image["status"] == "active", image
    # Nova's properties ...
    assert image["instance_uuid"] == server.id
    assert image["image_type"] == "snapshot"
    assert image["base_image_ref"]
    assert image["owner"] == cloud.demo_project
    # ... and ours, equal to what Glance computed itself.
    assert image["disk_format"] == "qcow2" and image["container_format"] == "bare"
    assert image["snapshot_node"] == server.node
    assert image["snapshot_sha512"] == image["os_hash_value"]
    assert image["snapshot_md5"] == image["checksum"]
    assert image["snapshot_image_size"] == str(image["size"])

    # The image restores the node's disk, which the capture left unchanged.
    # Free space (a deleted file's blocks) is skipped by default, so the
    # judge is the filesystem: fsck-clean and the same files as the disk.
    stored = cloud.glance.store_dir / image_id
    subprocess.run(["qemu-img", "check", "-q", str(stored)], check=True)
    assert_same_files(server.disk, stored, tmp_path)
    assert server.disk.sha256() == before

    assert record["status"] == "ACTIVE", record
    _assert_node_back(cloud, server)
    assert _app_credentials(cloud, cloud.alice) == []
    assert _faults(cloud, server) == []
    # No token (fernet tokens start with gAAAAA) in any Nova log.
    assert "gAAAAA" not in cloud.nova.nova_logs()


def test_member_of_another_project_is_refused(cloud: Cloud, server: Server) -> None:
    images_before = {image["id"] for image in cloud.images()}
    result = cloud.openstack("bob", "server", "image", "create", "--name", "not-mine",
                             server.id)
    assert result.returncode != 0
    assert "No Server found" in result.stderr or "404" in result.stderr, result.stderr
    assert {image["id"] for image in cloud.images()} == images_before
    assert cloud.ironic.node(server.node)["provision_state"] == "active"
    assert _server(cloud, server)["status"] == "ACTIVE"


def _snapshot_fails(cloud: Cloud, server: Server, env: dict[str, str] | None = None,
                    user: str = "alice", name: str = "failing") -> tuple[str, str]:
    """Requests a snapshot that must fail; returns the new fault (message, details)."""
    faults_before = len(_faults(cloud, server))
    images_before = {image["id"] for image in cloud.images()}
    result = cloud.openstack(user, "server", "image", "create", "--name", name, server.id,
                             "-f", "json", env=env)
    if result.returncode == 0:
        image_id = json.loads(result.stdout)["id"]
    else:
        # A fast failure: Nova deleted the image before the client read it back.
        found = re.search(r"No Image found for ([0-9a-f-]{36})", result.stderr)
        assert found, result.stderr
        image_id = found.group(1)
    time.sleep(2)
    record = _wait_task_done(cloud, server, timeout=400)
    assert record["status"] == "ACTIVE", record
    faults = _faults(cloud, server)
    assert len(faults) == faults_before + 1, (faults, cloud.nova.nova_log("compute"))
    # Nova deleted the image.
    _wait(f"image {image_id} was not deleted",
          lambda: (cloud.image(image_id) or {"status": "deleted"})["status"] == "deleted",
          timeout=30)
    assert {image["id"] for image in cloud.images()} == images_before
    _assert_node_back(cloud, server)
    assert _app_credentials(cloud, cloud.alice) == []
    assert "gAAAAA" not in cloud.nova.nova_logs() + faults[-1][0] + faults[-1][1]
    return faults[-1]


def test_agent_never_comes(cloud: Cloud, server: Server) -> None:
    # No agent is started: Ironic gives up waiting for it.
    message, _ = _snapshot_fails(cloud, server, name="no-agent")
    assert message.startswith("Snapshot of node"), message
    assert "timeout" in message.lower() or "timed out" in message.lower(), message


def test_user_of_an_application_credential_is_told_why(cloud: Cloud, server: Server) -> None:
    alice_token = cloud.keystone.password_token("alice", PASSWORD, project="demo")
    created = cloud.keystone.api("POST", f"/v3/users/{cloud.alice}/application_credentials",
                                 {"application_credential": {"name": "alice-login"}},
                                 token=alice_token)["application_credential"]
    try:
        env = {k: v for k, v in cloud.env("alice").items()
               if k in ("PATH", "HOME", "OS_AUTH_URL", "OS_REGION_NAME", "OS_INTERFACE")}
        env.update(OS_AUTH_TYPE="v3applicationcredential",
                   OS_APPLICATION_CREDENTIAL_ID=created["id"],
                   OS_APPLICATION_CREDENTIAL_SECRET=created["secret"],
                   OS_IDENTITY_API_VERSION="3")
        message, _ = _snapshot_fails(cloud, server, env=env, name="by-app-cred")
        assert message.startswith(APP_CREDENTIAL_FAULT), message
        assert created["secret"] not in cloud.nova.nova_logs()
    finally:
        cloud.keystone.api("DELETE", f"/v3/users/{cloud.alice}/application_credentials/"
                                     f"{created['id']}")
