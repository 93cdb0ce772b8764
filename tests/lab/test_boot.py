"""Captured images boot: a real Debian disk, booted, captured with the CLI, booted again.

Three disk kinds (UEFI with GRUB, UEFI with systemd-boot, both GPT with a
FAT ESP; BIOS with GRUB on an MBR disk). Each disk is booted once writable
under OVMF or SeaBIOS (TCG): the guest writes a token
that only this run knows and shuts down (cleanly, or by an immediate reset
that leaves the journal to recover). The CLI captures the disk with free
space skipped, ``qemu-img check`` judges the image, its root filesystem must
pass ``e2fsck -fn`` where the shutdown was clean, and the image boots (its
own writes kept out of it by ``snapshot=on``) until the token reads back.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.blockdev import loop_device, run
from tests.lab import guest as lab


def write_token(disk: Path, firmware: str, work: Path, *, clean: bool) -> str:
    """Boots ``disk`` writable, stores a fresh token in /root/token, shuts down."""
    token = uuid.uuid4().hex
    with lab.boot([disk], work, firmware=firmware) as vm:
        vm.wait_for_prompt()
        vm.sh(f"echo {token} > /root/token && sync")
        if clean:
            vm.send("systemctl poweroff\n")
        else:
            # An immediate reset: the ext4 journal is left for the next mount to recover.
            vm.send("echo b > /proc/sysrq-trigger\n")
        assert vm.wait_exit(120) == 0
        if clean:
            assert re.search(r"reboot: Power down", vm.console()), vm.console()[-2000:]
    return token


def capture(cli: Path, disk: Path, out: Path) -> dict:
    """Captures ``disk`` with the CLI (free space skipped) and returns its report."""
    proc = run(cli, "capture", disk, "-o", out, "--json", text=True)
    report = json.loads(proc.stdout)
    run("qemu-img", "check", "-q", out)
    info = json.loads(run("qemu-img", "info", "--output=json", out, text=True).stdout)
    assert info["format"] == "qcow2" and "backing-filename" not in info
    return report


def root_partition(report: dict) -> dict:
    """The report entry of the disk's ext4 root partition."""
    (root,) = [p for p in report["partitions"] if p["content"] == "ext4"]
    return root


def root_fsck(image: Path, tmp: Path, report: dict) -> str:
    """``e2fsck -fn`` of the image's root partition; returns its output."""
    raw = tmp / "restored.raw"
    run("qemu-img", "convert", "-O", "raw", image, raw)
    part = root_partition(report)
    with loop_device(raw, part["start"], part["size"], read_only=True) as dev:
        proc = subprocess.run(["e2fsck", "-fn", dev], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    raw.unlink()
    return proc.stdout


def read_token(image: Path, firmware: str, work: Path) -> str:
    """Boots ``image`` (writes go to a throwaway overlay) and reads /root/token."""
    with lab.boot([image], work, firmware=firmware, extra=["-snapshot"]) as vm:
        vm.wait_for_prompt()
        _, out = vm.sh("cat /root/token")
        vm.send("systemctl poweroff\n")
        vm.wait_exit(120)
    return out.strip()


@pytest.mark.parametrize("kind", ["uefi-grub", "uefi-systemd-boot", "bios-grub"])
def test_image_boots(kind: str, lab_disk: Callable[[str], tuple[Path, str]],
                     disk_copy: Callable[[Path], Path], cli_binary: Path, tmp_path: Path) -> None:
    built, firmware = lab_disk(kind)
    disk = disk_copy(built)
    token = write_token(disk, firmware, tmp_path / "first-boot", clean=True)
    sha_before = run("sha256sum", disk, text=True).stdout.split()[0]
    image = tmp_path / "snapshot.qcow2"
    report = capture(cli_binary, disk, image)
    assert run("sha256sum", disk, text=True).stdout.split()[0] == sha_before
    root = root_partition(report)
    assert root["handling"] == "allocated-only", report["partitions"]
    assert root["bytes_to_read"] < root["size"] // 2, root
    root_fsck(image, tmp_path, report)
    assert read_token(image, firmware, tmp_path / "image-boot") == token


def test_unclean_disk_image_boots(lab_disk: Callable[[str], tuple[Path, str]],
                                  disk_copy: Callable[[Path], Path], cli_binary: Path,
                                  tmp_path: Path) -> None:
    built, firmware = lab_disk("uefi-grub")
    disk = disk_copy(built)
    token = write_token(disk, firmware, tmp_path / "first-boot", clean=False)
    image = tmp_path / "snapshot.qcow2"
    report = capture(cli_binary, disk, image)
    root = root_partition(report)
    # A journal to replay: nothing of that partition may be skipped.
    assert root["handling"] == "whole" and "journal" in root.get("reason", ""), root
    run("qemu-img", "compare", "-q", disk, image)
    assert read_token(image, firmware, tmp_path / "image-boot") == token
