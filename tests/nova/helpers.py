"""Helpers of the Nova tests: the server, its faults, failing snapshots."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

from tests.nova.conftest import AGENT_PLUGIN, Cloud, Server, _wait


def _agent_env() -> dict[str, str]:
    # The agent also needs this checkout's package (PYTHONPATH of the tests).
    path = os.pathsep.join(p for p in (str(AGENT_PLUGIN), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


def _server(cloud: Cloud, server: Server) -> dict[str, Any]:
    return cloud.server(server.id)


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

    result: dict[str, Any] = _wait(f"server {server.id} still has a task", done, timeout,
                                   interval=1)
    return result


def _assert_node_back(cloud: Cloud, server: Server) -> None:
    record = cloud.ironic.wait_for_state(server.node, "active", timeout=120)
    assert record["power_state"] == "power on", record
    assert not record.get("maintenance"), record
    assert record["instance_uuid"] == server.id


def _app_credentials(cloud: Cloud, user_id: str) -> list[dict[str, Any]]:
    return [item for item in cloud.keystone.application_credentials(user_id)
            if item["name"].startswith("ironic-snapshot-")]


def _snapshot_fails(cloud: Cloud, server: Server, env: dict[str, str] | None = None,
                    user: str = "alice", name: str = "failing",
                    during: Callable[[str], None] | None = None) -> tuple[str, str]:
    """Requests a snapshot that must fail; returns the new fault (message, details).

    :param during: called with the image id once Nova accepted the request.
    """
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
    if during is not None:
        during(image_id)
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
