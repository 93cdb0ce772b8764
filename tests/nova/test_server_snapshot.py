"""``openstack server image create`` of a bare-metal server, through a real Nova 34.

nova-compute runs ``ironic_snapshot.IronicDriver`` (loaded through the shim
``nova.virt.ironic_snapshot``), which services the node with ``snapshot_disk``
in a real ironic-python-agent; Glance, Keystone and Ironic check every token.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from tests.client.test_snapshot_command import assert_same_files
from tests.nova.conftest import PASSWORD, Cloud, Server
from tests.nova.helpers import (
    _agent_env,
    _app_credentials,
    _assert_node_back,
    _faults,
    _server,
    _snapshot_fails,
    _wait_task_done,
)
from tests.stack.ipa import agent_on_demand

#: The driver's fault message for a user logged in with an application credential.
APP_CREDENTIAL_FAULT = "You are logged in with an application credential"


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


def test_glance_killed_during_upload(cloud: Cloud, server: Server, tmp_path: Path) -> None:
    sha_before = server.disk.sha256()
    seen: list[str] = []

    def kill_glance_once_data_flows(image_id: str) -> None:
        # Killed once Glance itself says the data is arriving (saving), as
        # in tests/functional; started again at once, as a service manager
        # would: the upload broken off stays broken, and Nova must be able
        # to delete the image afterwards.
        # Glance's status is read from its database: an API request that
        # Keystone validates takes longer, on a loaded machine, than the
        # few seconds the upload of the test disk lasts.
        database = cloud.glance.workdir / "glance.sqlite"

        def status() -> str | None:
            with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True,
                                                    timeout=5)) as db:
                row = db.execute("SELECT status FROM images WHERE id = ?",
                                 (image_id,)).fetchone()
            return row[0] if row else None

        def watch() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    current = status()
                except sqlite3.Error:
                    current = None
                if current == "saving":
                    cloud.glance.kill()
                    seen.append("killed")
                    cloud.glance.restart()
                    seen.append("restarted")
                    return
                if current in ("active", "deleted", "killed"):
                    seen.append(current)
                    return
                time.sleep(0.05)
        threading.Thread(target=watch, daemon=True).start()

    with agent_on_demand(cloud.ironic, server.node, tmp_path / "ipa",
                         agent_env=_agent_env()) as watch:
        message, _ = _snapshot_fails(cloud, server, name="glance-dies",
                                     during=kill_glance_once_data_flows)
    assert seen == ["killed", "restarted"], (seen, watch.states)
    assert message.startswith("Snapshot of node"), message
    assert "Upload of" in message and "failed" in message, message
    assert server.disk.sha256() == sha_before
