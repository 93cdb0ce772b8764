"""The plugin's ``stack extra`` phase against a real Ironic and a real Glance.

The DevStack functions are still stand-ins (see :mod:`harness`), but the
``openstack`` client is the real one, talking to a real Ironic all-in-one and
a real Glance on loopback (no authentication, as ``tests.stack`` runs them)
through a ``clouds.yaml`` entry named like DevStack's. Ironic then accepts
``baremetal node service --runbook`` with the runbook the plugin made.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.stack.glance import GlanceServer, start_glance
from tests.stack.ironic import IronicServer, start_ironic

from .harness import VENV_BIN, Harness

RUNBOOK = "CUSTOM_SNAPSHOT_DISK"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[IronicServer, GlanceServer, Path]]:
    tmp_path = tmp_path_factory.mktemp("real-cloud")
    with start_glance(tmp_path / "glance") as glance, start_ironic(tmp_path / "ironic") as ironic:
        clouds = tmp_path / "clouds.yaml"
        clouds.write_text(
            "clouds:\n"
            "  devstack-admin:\n"
            "    auth_type: none\n"
            "    auth:\n"
            f"      endpoint: {ironic.endpoint}\n"
            f"    baremetal_endpoint_override: {ironic.endpoint}\n"
            f"    image_endpoint_override: {glance.endpoint}\n"
            "    baremetal_api_version: latest\n"
        )
        yield ironic, glance, clouds


def real_client_harness(root: Path, clouds: Path, glance: GlanceServer) -> tuple[Harness, dict[str, str]]:
    h = Harness(root)
    (h.bin / "openstack").unlink()
    (h.bin / "openstack").symlink_to(VENV_BIN / "openstack")
    env = {"OS_CLIENT_CONFIG_FILE": str(clouds), "GLANCE_URL": glance.endpoint}
    return h, env


def runbook(ironic: IronicServer) -> dict[str, Any]:
    return ironic.api("GET", f"/v1/runbooks/{RUNBOOK}")


def test_extra_registers_a_runbook_ironic_runs(cloud: tuple[IronicServer, GlanceServer, Path], tmp_path: Path) -> None:
    ironic, glance, clouds = cloud
    # No agent runs in these tests: the port needs no real MAC address.
    node = ironic.create_active_node("snap-1", mac="52:54:00:5a:00:01", root_device="/dev/ironic-snapshot-test-none")
    h, env = real_client_harness(tmp_path / "h", clouds, glance)

    # stdin is a pipe here, as in CI: the image must still stay queued.
    r = h.run("stack:extra", **env)
    assert r.returncode == 0, r.stderr[-4000:]

    book = runbook(ironic)
    (step,) = book["steps"]
    assert (step["interface"], step["step"], int(step["order"])) == ("deploy", "snapshot_disk", 1)
    args = step["args"]
    assert args["glance_endpoint"] == glance.endpoint
    assert (args["disk_format"], args["compression"], args["memory_limit"]) == ("qcow2", "zstd", "256M")
    image = glance.get_image(args["image_id"])
    assert image["status"] == "queued" and image["disk_format"] == "qcow2"
    assert image["name"] == "ironic-snapshot-runbook-target"
    assert RUNBOOK in ironic.api("GET", f"/v1/runbooks/{RUNBOOK}/traits")["traits"]
    assert RUNBOOK in ironic.node(node)["traits"]

    # Ironic approves the runbook for the node and starts servicing it; the
    # node then waits for an agent (none is started here), and is aborted.
    ironic.cli("node", "service", node, "--runbook", RUNBOOK)
    ironic.wait_for_state(node, "service wait", timeout=90)
    ironic.cli("node", "abort", node)
    ironic.wait_for_state(node, "active", timeout=90)

    # A second stack: the queued image is reused, the runbook replaced.
    r = h.run("stack:extra", **env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert runbook(ironic)["steps"][0]["args"]["image_id"] == args["image_id"]
    assert runbook(ironic)["uuid"] != book["uuid"]
    status, body = glance.request("GET", "/v2/images?name=ironic-snapshot-runbook-target")
    assert status == 200 and len(json.loads(body)["images"]) == 1


def test_node_without_the_trait_is_refused(cloud: tuple[IronicServer, GlanceServer, Path], tmp_path: Path) -> None:
    ironic, glance, clouds = cloud
    node = ironic.create_active_node("snap-2", mac="52:54:00:5a:00:02", root_device="/dev/ironic-snapshot-test-none")
    h, env = real_client_harness(tmp_path / "h", clouds, glance)
    other = "CUSTOM_SNAPSHOT_NOT_APPROVED"
    r = h.run(
        "stack:extra",
        IRONIC_SNAPSHOT_APPROVE_NODES="False",
        IRONIC_SNAPSHOT_RUNBOOK_NAME=other,
        IRONIC_SNAPSHOT_IMAGE_NAME="not-approved-target",
        **env,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert other in [b["name"] for b in ironic.api("GET", "/v1/runbooks")["runbooks"]]
    assert other not in ironic.node(node)["traits"]
    out = subprocess.run(
        [str(VENV_BIN / "baremetal"), "node", "service", node, "--runbook", other],
        env=ironic.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "not been approved" in out.stderr
    assert ironic.node(node)["provision_state"] == "active"
