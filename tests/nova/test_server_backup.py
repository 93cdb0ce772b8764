"""``openstack server backup create --rotate``: Nova's createBackup through the driver.

Nova's ``backup_instance`` takes the snapshot through ``driver.snapshot``
(the same path as ``server image create``), then deletes the backups of the
same type beyond the rotation, oldest first.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.client.test_snapshot_command import assert_same_files
from tests.nova.conftest import Cloud, Server, _wait
from tests.nova.helpers import (
    _agent_env,
    _app_credentials,
    _assert_node_back,
    _faults,
    _wait_task_done,
)
from tests.stack.ipa import agent_on_demand


def _backups(cloud: Cloud, server: Server) -> list[dict[str, Any]]:
    return [image for image in cloud.images()
            if image.get("image_type") == "backup" and image.get("instance_uuid") == server.id]


def test_backup_rotation_keeps_the_two_newest(cloud: Cloud, server: Server,
                                              tmp_path: Path) -> None:
    faults_before = len(_faults(cloud, server))
    created: list[str] = []
    # A fresh agent for every service, as a ramdisk boot would give.
    with agent_on_demand(cloud.ironic, server.node, tmp_path / "ipa", agent_env=_agent_env(),
                         per_service=True) as watch:
        for number in range(3):
            result = cloud.openstack("alice", "server", "backup", "create", "--name",
                                     f"daily-{number}", "--type", "daily", "--rotate", "2",
                                     server.id, "-f", "json")
            assert result.returncode == 0, result.stderr
            created.append(json.loads(result.stdout)["id"])
            record = _wait_task_done(cloud, server, timeout=600)
            assert record["status"] == "ACTIVE", (record, cloud.nova.nova_log("compute"))
            image = cloud.image(created[-1])
            assert image is not None and image["status"] == "active", (
                image, cloud.nova.nova_log("compute"), watch.agent_log()[-3000:])
    # Nova rotates once the snapshot returned (after the task state is
    # cleared): the oldest backup goes shortly after the third one is done.
    _wait("the oldest backup was not rotated out",
          lambda: {image["id"] for image in _backups(cloud, server)} == set(created[1:]),
          timeout=60, interval=1)
    assert cloud.image(created[0]) is None or cloud.image(created[0])["status"] == "deleted"
    assert len(watch.agents) == 3, watch.states
    for image in _backups(cloud, server):
        assert image["status"] == "active" and image["backup_type"] == "daily", image
        assert image["owner"] == cloud.demo_project
        # Verified: Glance's own hashes equal the step's report.
        assert image["snapshot_node"] == server.node
        assert image["snapshot_sha512"] == image["os_hash_value"]
        assert image["snapshot_md5"] == image["checksum"]
        assert image["snapshot_image_size"] == str(image["size"])
    # The newest restores the node's filesystem.
    stored = cloud.glance.store_dir / created[-1]
    subprocess.run(["qemu-img", "check", "-q", str(stored)], check=True)
    assert_same_files(server.disk, stored, tmp_path)
    _assert_node_back(cloud, server)
    assert len(_faults(cloud, server)) == faults_before
    assert _app_credentials(cloud, cloud.alice) == []
