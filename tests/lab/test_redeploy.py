"""A snapshot taken by ``baremetal node service`` redeploys through Ironic's own deploy and boots.

The lab's BIOS disk (GRUB in the MBR and the gap after it, one ext4
partition) is booted once writable (the guest stores a token), attached
read-only to a loop device and captured by the ``snapshot_disk`` step of a
real agent into a real Glance, free space skipped. ``ironic-snapshot
verify`` passes on the image as the step left it. Then Ironic deploys it
with the ``direct`` interface onto a second node (another loop device of the
same size; the conductor serves the image from Glance, see
``tests/stack/deploy.py``), and the redeployed disk is compared with the
source: every byte outside the partitions (partition table, boot code,
GRUB's core image) identical, the filesystem clean and file-identical (its
free space was not captured, so the partition bytes may differ). Last, the
redeployed disk boots and reads the token back: the step's image boots.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.blockdev import detach_loop, forget_partitions, loop_device, mounted, run
from tests.functional.helpers import missing_requirements, run_service_step
from tests.lab.test_boot import read_token, write_token
from tests.stack.deploy import create_available_node, deploy, image_server, ironic_conf
from tests.stack.glance import start_glance
from tests.stack.ironic import host_mac, start_ironic

_MISSING = missing_requirements()


@pytest.fixture
def attached(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``attached(path, read_only=False)``: a loop device over a whole disk file, detached at the end."""
    devices: list[str] = []

    def attach(path: Path, *, read_only: bool = False) -> str:
        flags = ["--read-only"] if read_only else []
        device = run("losetup", "--find", "--show", *flags, path, text=True).stdout.strip()
        devices.append(device)
        forget_partitions(device)
        return device

    yield attach
    for device in devices:
        # The deploy's partprobe gave the device partitions: they outlive the detach.
        detach_loop(device)


def partitions(disk: Path) -> list[dict]:
    """The partition table (sfdisk's JSON): label, ids and partitions with start and size in sectors."""
    table = json.loads(run("sfdisk", "--json", disk, text=True).stdout)["partitiontable"]
    # Names of the file and its partitions, not part of the table.
    table.pop("device")
    for part in table["partitions"]:
        part.pop("node")
    return table


def outside_partitions(disk: Path, table: dict) -> bytes:
    """Every byte of ``disk`` that is in no partition: tables, boot code, gaps."""
    size = disk.stat().st_size
    spans = sorted((p["start"] * 512, (p["start"] + p["size"]) * 512) for p in table["partitions"])
    out = bytearray()
    with open(disk, "rb") as handle:
        position = 0
        for start, end in [*spans, (size, size)]:
            handle.seek(position)
            out += handle.read(start - position)
            position = max(position, end)
    return bytes(out)


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: type, mode, owner, and content digest or link target."""
    entries: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            kind = stat.S_IFMT(info.st_mode)
            if stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                digest = os.readlink(path)
            else:
                digest = str(info.st_rdev) if kind in (stat.S_IFCHR, stat.S_IFBLK) else ""
            entries[str(path.relative_to(root))] = (kind, stat.S_IMODE(info.st_mode), info.st_uid,
                                                    info.st_gid, info.st_size, digest)
    return entries


def assert_same_disk(source: Path, redeployed: Path, work: Path) -> None:
    """The comparison of the issue: tables and boot areas byte-identical, filesystems clean and
    file-identical."""
    table = partitions(source)
    assert partitions(redeployed) == table
    assert outside_partitions(redeployed, table) == outside_partitions(source, table)
    for number, part in enumerate(table["partitions"], start=1):
        start, size = part["start"] * 512, part["size"] * 512
        with loop_device(redeployed, start, size, read_only=True) as new, \
                loop_device(source, start, size, read_only=True) as old:
            kind = run("blkid", "-o", "value", "-s", "TYPE", old, text=True).stdout.strip()
            assert kind == "ext4", f"partition {number} is {kind!r}: compare it byte for byte"
            fsck = subprocess.run(["e2fsck", "-fn", new], capture_output=True, text=True)
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr
            with mounted(old, work / f"old{number}", "ro,noload") as old_root, \
                    mounted(new, work / f"new{number}", "ro,noload") as new_root:
                old_tree, new_tree = tree(old_root), tree(new_root)
            assert new_tree.keys() == old_tree.keys()
            differ = [name for name in old_tree if old_tree[name] != new_tree[name]]
            assert not differ, differ[:20]
            assert len(old_tree) > 1000, "a Debian root holds thousands of files"


@pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")
def test_service_snapshot_redeploys_and_boots(lab_disk: Callable[[str], tuple[Path, str]],
                                              disk_copy: Callable[[Path], Path],
                                              attached: Callable[..., str], cli_binary: Path,
                                              tmp_path: Path) -> None:
    built, firmware = lab_disk("bios-grub")
    source = disk_copy(built)
    token = write_token(source, firmware, tmp_path / "first-boot", clean=True)
    sha_before = run("sha256sum", source, text=True).stdout.split()[0]

    with image_server(tmp_path / "http") as http, start_glance(tmp_path / "glance") as glance, \
            start_ironic(tmp_path / "ironic", extra_conf=ironic_conf(
                http, glance.endpoint, tmp_path / "ironic-cache")) as ironic:
        # The snapshot, by the step, of the disk attached read-only.
        source_device = attached(source, read_only=True)
        node = ironic.create_active_node("source", mac=host_mac(), root_device=source_device)
        # Ironic deploys a Glance image only if its conductor may see it: with
        # no Keystone the image has no owner, so it must be community (or public).
        image = glance.create_image("redeploy", disk_format="qcow2", visibility="community")
        outcome = run_service_step(ironic, node, {
            "image_id": image["id"], "glance_endpoint": glance.endpoint,
            "device": source_device}, tmp_path / "ipa-snapshot")
        assert outcome.state == "active", f"{outcome.last_error}\n{outcome.agent_log[-5000:]}"
        stored = glance.get_image(image["id"])
        assert int(stored["snapshot_bytes_read"]) < source.stat().st_size // 2, stored
        proc = subprocess.run([str(cli_binary), "verify", "--glance-image", image["id"],
                               "--glance-endpoint", glance.endpoint],
                              capture_output=True, text=True, timeout=300)
        assert (proc.returncode, proc.stdout) == (0, "OK\n"), proc.stdout + proc.stderr

        # Ironic's own deploy of that image onto another node's disk.
        target = tmp_path / "redeployed.raw"
        with open(target, "wb") as handle:
            handle.truncate(source.stat().st_size)
        target_node = create_available_node(ironic, "target", root_device=attached(target))
        result = deploy(ironic, target_node, image["id"], tmp_path / "ipa-deploy")
        assert result.node["provision_state"] == "active", (
            f"{result.last_error}\n{result.agent_log[-5000:]}")
        assert f"image ({image['id']}) written to device" in result.agent_log
        print(f"deploy took {result.seconds:.1f} s")

    assert run("sha256sum", source, text=True).stdout.split()[0] == sha_before, "the source changed"
    assert_same_disk(source, target, tmp_path)
    assert read_token(target, firmware, tmp_path / "redeployed-boot") == token
