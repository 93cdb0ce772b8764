"""``openstack server shelve`` of a bare-metal server. Runs last (by its file
name, ``test_z_``): it leaves the session's server ``SHELVED_OFFLOADED``.

With ``shelved_offload_time = 0`` Nova shelves and offloads at once: it powers
the server off, snapshots it through ``driver.snapshot`` into the image
``<name>-shelved`` and unprovisions the node (``destroy``), which goes back to
the pool (``available``). Unshelve (a direct deploy of that image) is not
tested yet: see issue 12.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from tests.client.test_snapshot_command import assert_same_files
from tests.nova.conftest import Cloud, Server, _wait
from tests.nova.helpers import _agent_env, _app_credentials, _faults, _server
from tests.stack.ipa import agent_on_demand


def _settled(cloud: Cloud, server: Server, status: str, timeout: float) -> dict[str, Any]:
    """Waits until the server is ``status`` with no task; fails early on ERROR."""
    def check() -> dict[str, Any] | None:
        record = _server(cloud, server)
        assert record["status"] != "ERROR", (record, cloud.nova.nova_log("compute"))
        if record["status"] == status and not record.get("OS-EXT-STS:task_state"):
            return record
        return None

    result: dict[str, Any] = _wait(f"server {server.id} did not become {status}", check,
                                   timeout, interval=1)
    return result


def test_shelve_offloads_the_server(cloud: Cloud, server: Server, tmp_path: Path) -> None:
    faults_before = len(_faults(cloud, server))
    name = _server(cloud, server)["name"]
    started = time.monotonic()
    with agent_on_demand(cloud.ironic, server.node, tmp_path / "ipa-shelve",
                         agent_env=_agent_env()) as watch:
        result = cloud.openstack("alice", "server", "shelve", server.id)
        assert result.returncode == 0, result.stderr
        _settled(cloud, server, "SHELVED_OFFLOADED", timeout=600)
        # Nova sets the state before it lets go of the host and node.
        _wait("the server still names its node",
              lambda: not _server(cloud, server).get("OS-EXT-SRV-ATTR:hypervisor_hostname"),
              timeout=60, interval=1)
    print(f"\nshelve (offload included) took {time.monotonic() - started:.0f} s")
    assert "service wait" in watch.states, watch.states

    # The image: active, verified (Glance's hashes equal the step's report),
    # and it holds the node's filesystem.
    images = [image for image in cloud.images()
              if image.get("instance_uuid") == server.id and image["name"] == f"{name}-shelved"]
    assert len(images) == 1, images
    image = images[0]
    assert image["status"] == "active", image
    assert image["owner"] == cloud.demo_project
    assert image["snapshot_node"] == server.node
    assert image["snapshot_sha512"] == image["os_hash_value"]
    assert image["snapshot_md5"] == image["checksum"]
    assert image["snapshot_image_size"] == str(image["size"])
    stored = cloud.glance.store_dir / image["id"]
    subprocess.run(["qemu-img", "check", "-q", str(stored)], check=True)
    assert_same_files(server.disk, stored, tmp_path)

    # The node is back in the pool, its instance gone.
    node = cloud.ironic.node(server.node)
    assert node["provision_state"] == "available" and not node["target_provision_state"], node
    assert not node["instance_uuid"], node
    assert len(_faults(cloud, server)) == faults_before
    assert _app_credentials(cloud, cloud.alice) == []
