"""``openstack baremetal node snapshot`` end to end on a Keystone-authenticated cloud.

The command runs as a real user of a real project against real Keystone,
Glance and Ironic (both behind keystonemiddleware), and a real
ironic-python-agent with this package captures a loop device. The image is
judged by ``qemu-img``; the upload credential is attacked while the step runs
(it is read from the node, as anyone allowed to read the node could) and
after the snapshot.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import openstack
import pytest

from tests.functional.helpers import Disk, run

from .conftest import PASSWORD, Cloud, agent_on_demand


def _tree(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def _files_of(image: Path, offset: int, size: int, where: Path) -> dict[str, str]:
    """The files of the ext4 partition at ``offset`` of a raw image (checked by e2fsck)."""
    device = run("losetup", "--find", "--show", "--read-only", "-o", str(offset),
                 "--sizelimit", str(size), str(image)).strip()
    try:
        fsck = subprocess.run(["e2fsck", "-fn", device], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        where.mkdir()
        run("mount", "-o", "ro,noload", device, str(where))
        try:
            return _tree(where)
        finally:
            run("umount", str(where))
    finally:
        run("losetup", "--detach", device)


def assert_same_files(disk: Disk, qcow2: Path, work: Path) -> None:
    """The image restored holds a clean filesystem with the same files as the disk."""
    restored = work / "restored.raw"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(restored))
    assert restored.stat().st_size == disk.image.stat().st_size
    ours = _files_of(restored, disk.part_offset, disk.part_size, work / "mnt-image")
    assert "data/random.bin" in disk.files and len(disk.files) > 50
    assert ours == disk.files
    restored.unlink()


def _json(result: subprocess.CompletedProcess) -> dict[str, Any]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    return json.loads(result.stdout)


def _alice_credentials(cloud: Cloud) -> list[dict[str, Any]]:
    return cloud.keystone.application_credentials(cloud.alice)


def _node_settled(cloud: Cloud, node: str) -> dict[str, Any]:
    record = cloud.ironic.node(node)
    assert record["provision_state"] == "active", record
    assert not record["target_provision_state"], record
    return record


def _ensure_power_on(cloud: Cloud, node: str) -> None:
    if cloud.ironic.node(node)["power_state"] != "power on":
        cloud.ironic.cli("node", "power", "on", node)


def test_member_snapshots_node_end_to_end(cloud: Cloud, node: str, disk: Disk,
                                          tmp_path: Path) -> None:
    sha_before = disk.sha256()
    _ensure_power_on(cloud, node)
    seen: dict[str, Any] = {}
    # Another image of the same project, which the credential must not touch.
    status, raw = cloud.glance.request("POST", "/v2/images", {
        "name": "not-yours", "disk_format": "raw", "container_format": "bare"},
        token=cloud.token("alice"))
    assert status == 201, raw
    other_image = json.loads(raw)

    def attack(record: dict[str, Any]) -> None:
        """Uses the credential handed to the step, as a reader of the node could."""
        token = record["service_step"]["args"]["auth_token"]
        seen["token"] = token
        image_id = record["service_step"]["args"]["image_id"]
        glance = cloud.glance
        seen["list"] = glance.request("GET", "/v2/images", token=token)[0]
        seen["other_get"] = glance.request("GET", f"/v2/images/{other_image['id']}",
                                           token=token)[0]
        seen["other_patch"] = glance.request(
            "PATCH", f"/v2/images/{other_image['id']}",
            [{"op": "add", "path": "/stolen", "value": "yes"}], token=token,
            content_type="application/openstack-images-v2.1-json-patch")[0]
        seen["own_delete"] = glance.request("DELETE", f"/v2/images/{image_id}", token=token)[0]
        seen["own_get"] = glance.request("GET", f"/v2/images/{image_id}", token=token)[0]
        seen["ironic_nodes"] = _ironic_status(cloud, "/v1/nodes", token)
        status, _, _ = cloud.keystone.request(
            "POST", f"/v3/users/{cloud.alice}/application_credentials",
            {"application_credential": {"name": "escalate"}}, token=token)
        seen["new_credential"] = status

    with agent_on_demand(cloud.ironic, node, tmp_path / "ipa", on_service=attack) as watch:
        started = time.monotonic()
        result = cloud.cli("alice", "baremetal", "node", "snapshot", node, "--name", "exp-42",
                           "--property", "experiment=42", "--shutdown-timeout", "60",
                           "--device", disk.device,
                           "--timeout", "600", "-f", "json")
        elapsed = time.monotonic() - started
    assert result.returncode == 0, (f"exit {result.returncode}\n{result.stderr[-4000:]}\n"
                                    f"states {watch.states}\n{watch.agent_log()[-4000:]}")
    out = json.loads(result.stdout)
    assert out["status"] == "active"
    assert out["node_id"] == node
    assert "service wait" in watch.states and watch.states[-1] == "active", watch.states

    # The image: the caller's project, active, Glance's digests equal to the
    # report and to the bytes, and qemu-img accepts it and finds the disk in it.
    image = cloud.glance.get_image(out["image_id"])
    assert image["owner"] == cloud.demo_project
    assert image["status"] == "active"
    assert image["experiment"] == "42"
    data = cloud.glance.download(out["image_id"])
    assert image["os_hash_value"] == image["snapshot_sha512"] == hashlib.sha512(data).hexdigest()
    assert image["checksum"] == image["snapshot_md5"] == out["md5"]
    assert image["snapshot_sha256"] == out["sha256"] == hashlib.sha256(data).hexdigest()
    assert out["size"] == image["size"] == len(data)
    assert out["virtual_size"] == disk.image.stat().st_size
    assert out["elapsed_seconds"] <= elapsed + 1
    qcow2 = tmp_path / "snap.qcow2"
    qcow2.write_bytes(data)
    run("qemu-img", "check", "-q", str(qcow2))
    # Free space (and the clean journal) is skipped by default, so the judge
    # is the filesystem: fsck-clean and the same files as the disk.
    assert_same_files(disk, qcow2, tmp_path)
    assert disk.sha256() == sha_before, "the disk changed"

    # The OS was asked to shut down cleanly before servicing.
    assert "soft power off" in cloud.ironic.log_path.read_text(errors="replace")

    # While the step ran, the handed credential could read its own image and
    # nothing else: no listing, no other image, no delete, no Ironic, no new
    # credential.
    assert seen, f"the step's arguments were never seen on the node: {watch.states}"
    assert seen["own_get"] == 200, seen
    assert seen["list"] == 401, seen
    assert seen["other_get"] == 401, seen
    assert seen["other_patch"] == 401, seen
    assert seen["own_delete"] == 401, seen
    assert seen["ironic_nodes"] == 401, seen
    # Keystone refuses it too (401: a restricted credential's token).
    assert seen["new_credential"] in (401, 403), seen
    assert seen["token"] not in result.stdout + result.stderr
    assert cloud.glance.get_image(other_image["id"]).get("stolen") is None

    # After the snapshot the credential is gone and its token is dead.
    assert _alice_credentials(cloud) == []
    assert cloud.keystone.validate(seen["token"]) == 404
    status, _ = cloud.glance.request("GET", f"/v2/images/{out['image_id']}", token=seen["token"])
    assert status == 401
    _node_settled(cloud, node)


def _ironic_status(cloud: Cloud, path: str, token: str) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(cloud.ironic.endpoint + path, headers={
        "X-Auth-Token": token, "X-OpenStack-Ironic-API-Version": "1.87"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_other_project_is_refused(cloud: Cloud, node: str) -> None:
    _ensure_power_on(cloud, node)
    images_before = {image["id"] for image in cloud.images()}
    result = cloud.cli("bob", "baremetal", "node", "snapshot", node, "--name", "not-mine",
                       "-f", "json")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"Node {node} not found" in result.stderr
    assert "your project owns or leases it" in result.stderr
    assert {image["id"] for image in cloud.images()} == images_before
    assert cloud.keystone.application_credentials(cloud.bob) == []
    record = _node_settled(cloud, node)
    assert record["power_state"] == "power on"


def test_checks_before_shutdown(cloud: Cloud, node: str) -> None:
    """A node in maintenance is refused before anything changes."""
    _ensure_power_on(cloud, node)
    images_before = {image["id"] for image in cloud.images()}
    server = str(uuid.uuid4())
    cloud.ironic.cli("node", "set", node, "--instance-uuid", server)
    cloud.ironic.cli("node", "maintenance", "set", node, "--reason", "disk swap")
    try:
        result = cloud.cli("alice", "baremetal", "node", "snapshot", node, "--name", "x")
        # --server finds the node through the instance it hosts.
        by_server = cloud.cli("alice", "baremetal", "node", "snapshot", "--server", server,
                              "--name", "x")
    finally:
        cloud.ironic.cli("node", "maintenance", "unset", node)
        cloud.ironic.cli("node", "unset", node, "--instance-uuid")
    assert result.returncode == 1
    assert "Node client-node is in maintenance (disk swap)" in result.stderr, result.stderr
    assert by_server.returncode == 1
    assert "Node client-node is in maintenance (disk swap)" in by_server.stderr, by_server.stderr
    nobody = str(uuid.uuid4())
    unknown = cloud.cli("alice", "baremetal", "node", "snapshot", "--server", nobody,
                        "--name", "x")
    assert unknown.returncode == 1
    assert f"No bare-metal node hosts server {nobody}" in unknown.stderr, unknown.stderr
    bad_property = cloud.cli("alice", "baremetal", "node", "snapshot", node, "--name", "x",
                             "--property", "snapshot_sha256=forged")
    assert bad_property.returncode == 1
    assert "Property snapshot_sha256 cannot be set" in bad_property.stderr
    assert {image["id"] for image in cloud.images()} == images_before
    assert _alice_credentials(cloud) == []
    assert _node_settled(cloud, node)["power_state"] == "power on"


def test_failing_step_leaves_nothing_behind(cloud: Cloud, node: str, disk: Disk,
                                            tmp_path: Path) -> None:
    _ensure_power_on(cloud, node)
    sha_before = disk.sha256()
    images_before = {image["id"] for image in cloud.images()}
    with agent_on_demand(cloud.ironic, node, tmp_path / "ipa") as watch:
        result = cloud.cli("alice", "baremetal", "node", "snapshot", node, "--name", "doomed",
                           "--device", "/dev/ironic-snapshot-no-such-disk",
                           "--shutdown-timeout", "60", "--timeout", "300")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Device /dev/ironic-snapshot-no-such-disk does not exist" in result.stderr, (
        result.stderr)
    assert "service failed" in watch.states, watch.states
    assert {image["id"] for image in cloud.images()} == images_before
    assert _alice_credentials(cloud) == []
    record = _node_settled(cloud, node)
    # The node is back where it was: active and powered on.
    assert record["power_state"] == "power on"
    assert disk.sha256() == sha_before


def test_no_wait_then_show(cloud: Cloud, node: str, disk: Disk, tmp_path: Path) -> None:
    _ensure_power_on(cloud, node)
    with agent_on_demand(cloud.ironic, node, tmp_path / "ipa-ok"):
        started = time.monotonic()
        out = _json(cloud.cli("alice", "baremetal", "node", "snapshot", node, "--name",
                              "later", "--no-wait", "--shutdown-timeout", "60",
                              "--device", disk.device, "-f", "json"))
        returned_after = time.monotonic() - started
        assert out["status"] == "running"
        # It returned while the node still services (no agent ran the step yet).
        assert cloud.ironic.node(node)["provision_state"].startswith("service")
        assert len(_alice_credentials(cloud)) == 1
        states = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            show = cloud.cli("alice", "baremetal", "snapshot", "show", out["image_id"],
                             "-f", "json")
            assert show.returncode == 0, show.stderr
            shown = json.loads(show.stdout)
            states.append(shown["state"])
            if shown["state"] != "running":
                break
            time.sleep(2)
    # Shutdown, image and credential only: far less than the snapshot itself
    # (generous bound: this 2-core machine may be busy).
    assert returned_after < 90, returned_after
    assert states[0] == "running" and states[-1] == "succeeded", states
    assert shown["md5"] == cloud.glance.get_image(out["image_id"])["checksum"]
    # The finished snapshot's credential was deleted by the show.
    assert _alice_credentials(cloud) == []

    # A failing one: show reports the error and exits 1.
    with agent_on_demand(cloud.ironic, node, tmp_path / "ipa-fail"):
        out = _json(cloud.cli("alice", "baremetal", "node", "snapshot", node, "--name",
                              "later-fails", "--no-wait", "--no-clean-shutdown",
                              "--device", "/dev/ironic-snapshot-gone", "-f", "json"))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            show = cloud.cli("alice", "baremetal", "snapshot", "show", out["image_id"],
                             "-f", "json")
            shown = json.loads(show.stdout)
            if shown["state"] != "running":
                break
            time.sleep(2)
    assert shown["state"] == "failed", shown
    assert show.returncode == 1
    assert "Device /dev/ironic-snapshot-gone does not exist" in shown["last_error"]
    assert _alice_credentials(cloud) == []
    cloud.ironic.cli("node", "abort", node)
    cloud.ironic.wait_for_state(node, "active", timeout=120)


def test_python_api(cloud: Cloud, node: str, disk: Disk, tmp_path: Path) -> None:
    """The library under the command, as an operator's script uses it."""
    from ironic_snapshot.client import Progress, SnapshotResult, snapshot_node

    _ensure_power_on(cloud, node)
    conn = openstack.connect(auth_url=cloud.keystone.auth_url, username="alice",
                             password=PASSWORD, project_name="demo",
                             user_domain_id="default", project_domain_id="default",
                             region_name="RegionOne")
    seen: list[Progress] = []
    with agent_on_demand(cloud.ironic, node, tmp_path / "ipa"):
        result = snapshot_node(conn, node, name="scripted", disk_format="raw",
                               device=disk.device, step_args={"skip_free_space": False},
                               shutdown_timeout=60, timeout=600, progress=seen.append,
                               poll_interval=1)
    assert isinstance(result, SnapshotResult)
    assert result.status == "active" and result.disk_format == "raw"
    image = cloud.glance.get_image(result.image_id)
    assert image["disk_format"] == "raw"
    assert result.size == image["size"] == result.virtual_size
    # Raw and no free-space skipping: the image is the disk, byte for byte.
    assert hashlib.sha256(cloud.glance.download(result.image_id)).hexdigest() == disk.sha256()
    assert {p.phase for p in seen} >= {"shutdown", "service", "verify"}
    assert any(p.provision_state == "service wait" for p in seen)
    assert _alice_credentials(cloud) == []


@pytest.mark.parametrize("cli", ["openstack", "baremetal"])
def test_commands_registered(cli: str) -> None:
    """Both clients list the commands (python-ironicclient's group, no clash)."""
    import sys

    prefix = ["baremetal"] if cli == "openstack" else []
    binary = str(Path(sys.executable).parent / cli)
    for words in (["node", "snapshot"], ["snapshot", "show"]):
        result = subprocess.run([binary, "help", *prefix, *words], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout
    listed = subprocess.run([binary, "help", *prefix, "node", "snapshot"], capture_output=True,
                            text=True, timeout=120).stdout
    assert "--no-wait" in listed and "--server" in listed


def test_upload_credential_minted_after_power_off(cloud: Cloud, node: str) -> None:
    """The token handed to the step is minted once the OS is off, not before the shutdown.

    A Keystone token lives at most ``[token] expiration``: every second of the
    clean shutdown spent after minting it is a second less for the step to
    start its upload. The progress callback looks at Keystone while the
    command waits for the power-off; no agent runs (``wait=False``, then abort).
    """
    from ironic_snapshot.client import Progress, get_snapshot, snapshot_node

    _ensure_power_on(cloud, node)
    conn = openstack.connect(auth_url=cloud.keystone.auth_url, username="alice",
                             password=PASSWORD, project_name="demo",
                             user_domain_id="default", project_domain_id="default",
                             region_name="RegionOne")
    during_shutdown: list[list[dict[str, Any]]] = []

    def look(update: Progress) -> None:
        if update.phase == "shutdown":
            during_shutdown.append(_alice_credentials(cloud))

    result = snapshot_node(conn, node, name="minted-late", device="/dev/ironic-snapshot-none",
                           wait=False, shutdown_timeout=60, timeout=600, progress=look,
                           poll_interval=0.5)
    try:
        assert during_shutdown, "the command never reported the shutdown"
        assert all(found == [] for found in during_shutdown), during_shutdown
        # ... and it exists once the node is servicing.
        assert len(_alice_credentials(cloud)) == 1
    finally:
        cloud.ironic.cli("node", "abort", node)
        cloud.ironic.wait_for_state(node, "active", timeout=120)
        get_snapshot(conn, result.image_id)  # deletes the finished run's credential
        conn.image.delete_image(result.image_id, ignore_missing=True)
        _ensure_power_on(cloud, node)
    assert _alice_credentials(cloud) == []


def test_bad_capture_options_refused_before_shutdown(cloud: Cloud, node: str) -> None:
    """A bad cluster size, memory limit or compression fails before the node is touched.

    The engine's own rules (``check_options``) run in the client: before, such
    a value failed only in the agent, after the OS was shut down and the
    ramdisk booted. ``wait=False`` keeps a run that gets past the checks from
    waiting for an agent that never comes.
    """
    from ironic_snapshot.client import ValidationError, snapshot_node

    _ensure_power_on(cloud, node)
    images_before = {image["id"] for image in cloud.images()}
    for flags, needle in ((["--cluster-size", "3000"], "--cluster-size: 3000 is not a power "
                           "of two from 64K to 2M"),
                          (["--memory-limit", "lots"], 'Invalid memory_limit: Invalid size '
                           '"lots"'),
                          (["--compression-level", "99"], "zstd level 99 is out of range")):
        result = cloud.cli("alice", "baremetal", "node", "snapshot", node, "--name", "x",
                           *flags)
        assert result.returncode == 1, result.stdout + result.stderr
        assert needle in result.stderr, result.stderr
        assert "nothing was changed on the node" in result.stderr, result.stderr
    conn = openstack.connect(auth_url=cloud.keystone.auth_url, username="alice",
                             password=PASSWORD, project_name="demo",
                             user_domain_id="default", project_domain_id="default",
                             region_name="RegionOne")
    for kwargs, needle in (({"step_args": {"cluster_size": "4M"}}, "--cluster-size"),
                           ({"step_args": {"memory_limit": "12Q"}}, "memory_limit"),
                           ({"compression": "lz4"}, 'compression "lz4"'),
                           ({"step_args": {"threads": -2}}, "Invalid threads -2")):
        try:
            with pytest.raises(ValidationError, match=needle):
                snapshot_node(conn, node, name="x", wait=False, **kwargs)
        finally:
            if cloud.ironic.node(node)["provision_state"] != "active":
                cloud.ironic.cli("node", "abort", node)
                cloud.ironic.wait_for_state(node, "active", timeout=120)
    assert {image["id"] for image in cloud.images()} == images_before
    assert _alice_credentials(cloud) == []
    assert _node_settled(cloud, node)["power_state"] == "power on"
