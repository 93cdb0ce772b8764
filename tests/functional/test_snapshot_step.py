"""The ``snapshot_disk`` service step end to end, against real services.

``baremetal node service`` on a real Ironic makes a real ironic-python-agent
(with this package installed) capture a loop device holding a GPT disk with
an ext4 filesystem into an image of a real Glance. The image Glance stores is
judged by ``qemu-img check`` and ``qemu-img compare`` against the disk, and
every failure case must leave a clear ``last_error``, no new ``active`` image
and the disk untouched, with ``baremetal node abort`` bringing the node back.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from tests.stack.glance import GlanceServer, start_glance
from tests.stack.ironic import IronicServer

from .helpers import Disk, abort_to_active, run, run_service_step, sha256_file

#: A recognisable fake credential: Glance without auth ignores it, so it only
#: shows where our code (or Ironic/IPA) would leak it.
TOKEN = "gAAAAAB-h3-fake-token-" + uuid.uuid4().hex


#: A progress line of the step reporting image bytes sent to Glance.
WRITTEN = re.compile(r"Snapshot of \S+: writing [\d.]+% .* (?!0 B )[\d.]+ \w+ of image written")


def our_log_lines(agent_log: str) -> list[str]:
    """Agent log lines written by this package's loggers."""
    return [line for line in agent_log.splitlines() if re.search(r" ironic_snapshot[.\w]* ", line)]


def stamps(log: str, needle: str) -> list[float]:
    """Times (seconds since the epoch) of the log lines containing ``needle``."""
    found = []
    for line in log.splitlines():
        if needle in line:
            try:
                found.append(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp())
            except ValueError:
                continue
    return found


def stamp(log: str, needle: str) -> float:
    """Time of the first log line containing ``needle``."""
    found = stamps(log, needle)
    assert found, f"no log line with {needle!r}"
    return found[0]


def assert_failed_cleanly(ironic: IronicServer, node: str, outcome, disk: Disk, sha_before: str,
                          expected: str) -> None:
    """The common checks of every failure case."""
    assert outcome.state == "service failed", outcome.node
    assert re.search(expected, outcome.last_error), outcome.last_error
    assert disk.sha256() == sha_before, "the disk changed"
    for line in our_log_lines(outcome.agent_log):
        assert TOKEN not in line, f"our code logged the token: {line}"
    abort_to_active(ironic, node)


def test_snapshot_into_glance(ironic: IronicServer, glance: GlanceServer, node: str, disk: Disk,
                              tmp_path: Path, cli_binary: Path) -> None:
    sha_before = disk.sha256()
    image = glance.create_image("snap-ok")
    # Every byte, free space included, so that the image equals the disk.
    outcome = run_service_step(ironic, node, {
        "image_id": image["id"], "glance_endpoint": glance.endpoint, "auth_token": TOKEN,
        "device": disk.device, "skip_free_space": False,
    }, tmp_path / "ipa")
    assert outcome.state == "active", f"{outcome.last_error}\n{outcome.agent_log[-5000:]}"
    assert not outcome.last_error

    stored = glance.get_image(image["id"])
    assert stored["status"] == "active"
    assert stored["disk_format"] == "qcow2"
    data = glance.download(image["id"])
    # Glance's own digests, the properties the step wrote and the bytes we
    # download all agree.
    assert stored["os_hash_algo"] == "sha512"
    assert stored["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert stored["checksum"] == hashlib.md5(data).hexdigest()
    assert stored["snapshot_sha512"] == stored["os_hash_value"]
    assert stored["snapshot_md5"] == stored["checksum"]
    assert stored["snapshot_sha256"] == hashlib.sha256(data).hexdigest()
    assert stored["snapshot_image_size"] == str(len(data)) == str(stored["size"])
    assert stored["snapshot_virtual_size"] == str(disk.image.stat().st_size)
    assert stored["snapshot_node"] == node
    assert stored["snapshot_device"] == disk.device
    assert stored["snapshot_format"] == "qcow2"
    assert stored["snapshot_compression"] == "zstd"
    assert stored["snapshot_tool_version"]
    assert float(stored["snapshot_seconds"]) > 0

    # qemu-img is the judge of the image.
    qcow2 = tmp_path / "snap.qcow2"
    qcow2.write_bytes(data)
    run("qemu-img", "check", "-q", str(qcow2))
    compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2",
                              str(disk.image), str(qcow2)], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert disk.sha256() == sha_before, "the disk changed"

    # Progress was logged, and our code never logged the token.
    mine = our_log_lines(outcome.agent_log)
    assert any("Snapshot of " + disk.device in line and "%" in line for line in mine), mine
    for line in mine:
        assert TOKEN not in line, f"our code logged the token: {line}"

    # A third party checks the image with one command: it passes as the step
    # left it, and an edit of any snapshot_* property or of the provenance
    # record afterwards fails it with the reason.
    assert_verify(cli_binary, glance, image["id"], 0, "OK\n")
    other_node = str(uuid.uuid4())
    edit_property(glance, image["id"], "snapshot_node", other_node)
    assert_verify(cli_binary, glance, image["id"], 6,
                  f"FAILED: Property snapshot_node is \"{other_node}\", the provenance record "
                  f"says \"{node}\": it was edited after the snapshot")
    # Whoever edits the record to match must also fix its SHA-256.
    record = stored["snapshot_provenance_1"]
    assert record.startswith('{"snapshot_bytes_read":"'), record
    edit_property(glance, image["id"], "snapshot_provenance_1",
                  record.replace('{"snapshot_bytes_read":"', '{"snapshot_bytes_read":"1', 1))
    assert_verify(cli_binary, glance, image["id"], 6,
                  "FAILED: The provenance record was edited: its SHA-256 is")


def edit_property(glance: GlanceServer, image_id: str, name: str, value: str) -> None:
    """Sets an image property by hand, as someone editing the image afterwards would."""
    status, body = glance.request("PATCH", f"/v2/images/{image_id}",
                                  [{"op": "add", "path": f"/{name}", "value": value}],
                                  content_type="application/openstack-images-v2.1-json-patch")
    assert status == 200, body


def assert_verify(cli_binary: Path, glance: GlanceServer, image_id: str, code: int,
                  start: str) -> None:
    """``ironic-snapshot verify --glance-image``: its exit code and how its verdict starts."""
    proc = subprocess.run([str(cli_binary), "verify", "--glance-image", image_id,
                           "--glance-endpoint", glance.endpoint],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == code and proc.stdout.startswith(start), proc.stdout + proc.stderr


def test_snapshot_skipping_free_space(ironic: IronicServer, glance: GlanceServer, node: str,
                                      disk: Disk, tmp_path: Path) -> None:
    # The default: free space of the ext4 filesystem is not read, so the
    # image differs from the disk there; the filesystem and every file in it
    # must be intact.
    sha_before = disk.sha256()
    image = glance.create_image("snap-default", disk_format="qcow2")
    outcome = run_service_step(ironic, node, {
        "image_id": image["id"], "glance_endpoint": glance.endpoint, "device": disk.device},
        tmp_path / "ipa")
    assert outcome.state == "active", f"{outcome.last_error}\n{outcome.agent_log[-5000:]}"
    stored = glance.get_image(image["id"])
    assert stored["status"] == "active"
    data = glance.download(image["id"])
    assert stored["snapshot_sha512"] == stored["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert int(stored["snapshot_bytes_read"]) < disk.image.stat().st_size
    qcow2 = tmp_path / "snap.qcow2"
    qcow2.write_bytes(data)
    run("qemu-img", "check", "-q", str(qcow2))
    raw = tmp_path / "snap.raw"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(raw))
    part = run("losetup", "--find", "--show", "--read-only", "-o", str(disk.part_offset),
               "--sizelimit", str(disk.part_size), str(raw)).strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        fsck = subprocess.run(["e2fsck", "-fn", part], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        run("mount", "-o", "ro,noload", part, str(mnt))
        try:
            for relative, digest in disk.files.items():
                assert sha256_file(mnt / relative) == digest, relative
            assert not (mnt / "data" / "deleted.bin").exists()
        finally:
            run("umount", str(mnt))
    finally:
        run("losetup", "--detach", part)
    assert disk.sha256() == sha_before, "the disk changed"


def test_unknown_image(ironic: IronicServer, glance: GlanceServer, node: str, disk: Disk,
                       tmp_path: Path) -> None:
    sha_before = disk.sha256()
    missing = str(uuid.uuid4())
    outcome = run_service_step(ironic, node, {
        "image_id": missing, "glance_endpoint": glance.endpoint, "auth_token": TOKEN,
        "device": disk.device}, tmp_path / "ipa")
    assert_failed_cleanly(ironic, node, outcome, disk, sha_before,
                          f"Image {missing} was not found in Glance")


def test_image_not_queued(ironic: IronicServer, glance: GlanceServer, node: str, disk: Disk,
                          tmp_path: Path) -> None:
    sha_before = disk.sha256()
    image = glance.create_image("already-active", disk_format="raw")
    assert glance.upload(image["id"], b"\0" * 65536) == 204
    before = glance.get_image(image["id"])
    assert before["status"] == "active"
    outcome = run_service_step(ironic, node, {
        "image_id": image["id"], "glance_endpoint": glance.endpoint, "device": disk.device},
        tmp_path / "ipa")
    # The existing image is left exactly as it was.
    after = glance.get_image(image["id"])
    assert (after["status"], after["os_hash_value"]) == ("active", before["os_hash_value"])
    assert not any(key.startswith("snapshot_") for key in after)
    assert_failed_cleanly(ironic, node, outcome, disk, sha_before, "is active, not queued")


def test_glance_stopped_before_step(ironic: IronicServer, node: str, disk: Disk,
                                    tmp_path: Path) -> None:
    sha_before = disk.sha256()
    with start_glance(tmp_path / "glance") as down:
        image = down.create_image("glance-down")
        endpoint = down.endpoint
    outcome = run_service_step(ironic, node, {
        "image_id": image["id"], "glance_endpoint": endpoint, "auth_token": TOKEN,
        "device": disk.device}, tmp_path / "ipa")
    with start_glance(tmp_path / "glance") as again:
        assert again.get_image(image["id"])["status"] == "queued"
    assert_failed_cleanly(ironic, node, outcome, disk, sha_before, "could not be reached")


def test_glance_killed_during_upload(ironic: IronicServer, node: str, disk: Disk,
                                     tmp_path: Path) -> None:
    sha_before = disk.sha256()
    seen: list[str] = []
    with start_glance(tmp_path / "glance") as doomed:
        image = doomed.create_image("glance-dies")

        def kill_when_data_flows(agent) -> None:
            # Kill Glance once the step's progress line says image bytes
            # were sent (the upload is then well under way) and the agent
            # has heartbeaten since the capture started: a capture holding
            # the GIL would block that heartbeat, end before it and so let
            # the step succeed, which fails the assertions below.
            def watch() -> None:
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    log = agent.log()
                    started = stamps(log, "Capture started")
                    beaten = started and any(
                        t > started[0] for t in stamps(log, "sleeping before next heartbeat"))
                    # "Image written" counts bytes handed to the upload; the
                    # PUT reaches Glance a moment later: wait until Glance
                    # itself says the data is arriving.
                    if WRITTEN.search(log) and beaten:
                        status = doomed.get_image(image["id"])["status"]
                        if status == "saving":
                            seen.append(status)
                            doomed.kill()
                            return
                    time.sleep(0.1)
            threading.Thread(target=watch, daemon=True).start()

        # Slow compression (zstd 13 on one thread) and a small spool make the
        # capture last well past the 3-6 s between two heartbeats.
        outcome = run_service_step(ironic, node, {
            "image_id": image["id"], "glance_endpoint": doomed.endpoint, "auth_token": TOKEN,
            "device": disk.device, "compression_level": 13, "threads": 1,
            "memory_limit": "8M"}, tmp_path / "ipa", during=kill_when_data_flows)
    # The agent kept heartbeating while the engine worked (the GIL is free):
    # the watcher only kills Glance after a heartbeat during the capture.
    started = stamp(outcome.agent_log, "Capture started")
    ended = stamps(outcome.agent_log, "Command failed: execute_service_step")
    assert seen == ["saving"] and ended, (
        "the capture ended before the agent heartbeat during it, or before Glance was killed: "
        f"{seen}, {outcome.agent_log[-2000:]}")
    beats = [t for t in stamps(outcome.agent_log, "sleeping before next heartbeat")
             if started < t < ended[0]]
    assert beats, f"no heartbeat during a {ended[0] - started:.0f} s capture"
    with start_glance(tmp_path / "glance") as again:
        assert again.get_image(image["id"])["status"] != "active"
    assert_failed_cleanly(ironic, node, outcome, disk, sha_before,
                          "Upload of .* failed, the image is not active")


def test_missing_device(ironic: IronicServer, glance: GlanceServer, node: str, disk: Disk,
                        tmp_path: Path) -> None:
    sha_before = disk.sha256()
    image = glance.create_image("no-device")
    outcome = run_service_step(ironic, node, {
        "image_id": image["id"], "glance_endpoint": glance.endpoint,
        "device": "/dev/ironic-snapshot-no-such-disk"}, tmp_path / "ipa")
    assert glance.get_image(image["id"])["status"] == "queued"
    assert_failed_cleanly(ironic, node, outcome, disk, sha_before,
                          "Device /dev/ironic-snapshot-no-such-disk does not exist")


def test_mounted_device(ironic: IronicServer, glance: GlanceServer, node: str, disk: Disk,
                        tmp_path: Path) -> None:
    image = glance.create_image("mounted")
    part = disk.attach_partition()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        # Read-only, so that the disk stays byte-identical for the check.
        run("mount", "-o", "ro,noload", part, str(mnt))
        try:
            sha_before = disk.sha256()
            outcome = run_service_step(ironic, node, {
                "image_id": image["id"], "glance_endpoint": glance.endpoint, "device": part},
                tmp_path / "ipa")
        finally:
            run("umount", str(mnt))
    finally:
        run("losetup", "--detach", part)
    assert glance.get_image(image["id"])["status"] == "queued"
    assert_failed_cleanly(ironic, node, outcome, disk, sha_before,
                          f"Device {part} is in use: {mnt}")


@pytest.mark.parametrize(("args", "expected"), [
    ({"compression": "lz4"}, "Invalid value 'lz4' for argument compression"),
    ({"cluster_size": "3K"}, "Invalid cluster_size|cluster.size"),
    ({"disk_format": "raw"}, "differs from the disk_format qcow2"),
])
def test_bad_arguments(ironic: IronicServer, glance: GlanceServer, node: str, disk: Disk,
                       tmp_path: Path, args: dict, expected: str) -> None:
    sha_before = disk.sha256()
    image = glance.create_image("bad-args")
    outcome = run_service_step(ironic, node, {
        "image_id": image["id"], "glance_endpoint": glance.endpoint, "device": disk.device,
        **args}, tmp_path / "ipa")
    assert glance.get_image(image["id"])["status"] == "queued"
    assert_failed_cleanly(ironic, node, outcome, disk, sha_before, expected)


def test_digest_mismatch_deactivates_the_given_image(ironic: IronicServer, glance: GlanceServer,
                                                     node: str, disk: Disk,
                                                     tmp_path: Path) -> None:
    """Glance stores other bytes than the agent sent: the image must not stay usable.

    Real parts do not corrupt data on demand, so a proxy on loopback between
    the agent and Glance flips one bit of the upload body (not of its chunk
    framing): Glance stores and hashes the flipped data, the engine's digest
    check fails, and the step deactivates the caller's image and says so.
    """
    from urllib.parse import urlsplit

    from tests.stack.flip_proxy import flip_proxy

    sha_before = disk.sha256()
    image = glance.create_image("flipped", disk_format="raw")
    with flip_proxy(urlsplit(glance.endpoint).port, flip_at=(4 << 20) + 7) as proxy:
        outcome = run_service_step(ironic, node, {
            "image_id": image["id"], "glance_endpoint": proxy.endpoint,
            "auth_token": TOKEN, "device": disk.device, "disk_format": "raw"},
            tmp_path / "ipa")
    assert proxy.flipped == 1
    stored = glance.get_image(image["id"])
    # Deactivated: no one but an admin can download or boot it any more.
    assert stored["status"] == "deactivated", stored
    assert stored["os_hash_value"] != hashlib.sha512(disk.image.read_bytes()).hexdigest()
    assert_failed_cleanly(ironic, node, outcome, disk, sha_before,
                          rf"Image {image['id']} does not match the data of {disk.device}: "
                          rf".*(checksum|os_hash_value).*Image {image['id']} was deactivated so that "
                          "nobody can use it; snapshot again")
