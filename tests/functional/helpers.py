"""Helpers of the real-stack tests: the test disk and service step runs."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.stack.ipa import start_ipa
from tests.stack.ironic import IronicServer

MIB = 1024 * 1024

#: Size of the test disk and of its ext4 partition.
DISK_SIZE = 320 * MIB
PART_SIZE = 256 * MIB
#: Incompressible bytes written into the filesystem: enough for an upload
#: that lasts long enough to be interrupted.
RANDOM_BYTES = 160 * MIB


def missing_requirements() -> str | None:
    """Why this machine cannot run the real stack, or None."""
    if os.geteuid() != 0:
        return "needs root for loop devices and mounts"
    for tool in ("losetup", "sfdisk", "mkfs.ext4", "qemu-img", "lsblk", "udevadm", "lshw"):
        if shutil.which(tool) is None:
            return f"needs {tool} (see tests/apt-packages.txt)"
    try:
        importlib.import_module("ironic_snapshot._engine")
    except ImportError as exc:
        return f"needs the ironic-snapshot package installed in the venv (pip install -e .): {exc}"
    return None




def run(*args: str) -> str:
    """Runs a command, raising with its stderr on failure; returns stdout."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def assert_image_restores(data: bytes, disk: Disk, folder: Path) -> None:
    """The qcow2 image ``data`` passes ``qemu-img check`` and is identical to ``disk``."""
    qcow2 = folder / "snapshot.qcow2"
    qcow2.write_bytes(data)
    run("qemu-img", "check", "-q", str(qcow2))
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(qcow2),
                              str(disk.image)], capture_output=True, text=True, timeout=300)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "Images are identical" in compare.stdout


def sha256_file(path: Path | str) -> str:
    """SHA-256 of a file or device, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Disk:
    """The test disk: an image file, its loop device and its ext4 partition."""

    image: Path
    device: str
    part_offset: int
    part_size: int
    #: SHA-256 of every file written into the filesystem, by relative path.
    files: dict[str, str]

    def attach_partition(self) -> str:
        """A new loop device over the ext4 partition (the caller detaches it)."""
        return run("losetup", "--find", "--show", "-o", str(self.part_offset),
                   "--sizelimit", str(self.part_size), str(self.image)).strip()

    def sha256(self) -> str:
        """SHA-256 of the whole disk, read through its loop device."""
        return sha256_file(self.device)


def build_disk(folder: Path) -> tuple[Path, int, int, dict[str, str]]:
    """Writes a GPT disk image with an ext4 partition holding files.

    :returns: the image path, the partition's offset and size in bytes, and
        the SHA-256 of each file by path relative to the filesystem root.
    """
    files: dict[str, str] = {}
    image = folder / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(DISK_SIZE)
    subprocess.run(["sfdisk", "--quiet", str(image)], check=True, text=True, capture_output=True,
                   input=f"label: gpt\nstart=2048, size={PART_SIZE // 512}, type=L, name=root\n")
    table = json.loads(run("sfdisk", "--json", str(image)))["partitiontable"]
    part = table["partitions"][0]
    offset, size = part["start"] * 512, part["size"] * 512
    loop = run("losetup", "--find", "--show", "-o", str(offset), "--sizelimit", str(size),
               str(image)).strip()
    mnt = Path(tempfile.mkdtemp(prefix="mnt-", dir=folder))
    try:
        run("mkfs.ext4", "-q", "-F", "-L", "snaproot", loop)
        run("mount", loop, str(mnt))
        try:
            rng = random.Random(20261124)
            (mnt / "etc").mkdir()
            (mnt / "etc" / "hostname").write_text("snapshot-test\n")
            (mnt / "data").mkdir()
            for index in range(50):
                (mnt / "data" / f"note-{index}.txt").write_text(f"note {index}\n" * (index * 50 + 1))
            with open(mnt / "data" / "random.bin", "wb") as handle:
                for _ in range(RANDOM_BYTES // MIB):
                    handle.write(rng.randbytes(MIB))
            # A deleted file leaves stale blocks that free-space skipping drops.
            (mnt / "data" / "deleted.bin").write_bytes(rng.randbytes(8 * MIB))
            os.sync()
            (mnt / "data" / "deleted.bin").unlink()
            for path in sorted(mnt.rglob("*")):
                if path.is_file():
                    files[str(path.relative_to(mnt))] = sha256_file(path)
            os.sync()
        finally:
            run("umount", str(mnt))
    finally:
        run("losetup", "--detach", loop)
        mnt.rmdir()
    return image, offset, size, files


@dataclass
class StepRun:
    """The outcome of one service step run."""

    node: dict[str, Any]
    agent_log: str

    @property
    def state(self) -> str:
        return self.node["provision_state"]

    @property
    def last_error(self) -> str:
        return self.node.get("last_error") or ""


def run_service_step(ironic: IronicServer, node: str, args: dict[str, Any], workdir: Path,
                     *, timeout: float = 240, during: Any = None) -> StepRun:
    """Runs ``snapshot_disk`` with ``args`` through ``baremetal node service``.

    Starts a fresh agent once the node waits for one, waits for ``active`` or
    ``service failed`` and stops the agent.

    :param during: called with the :class:`tests.stack.ipa.Agent` right
        after it starts (to interfere with the run); its result is ignored.
    """
    steps = [{"interface": "deploy", "step": "snapshot_disk", "args": args}]
    ironic.cli("node", "service", node, "--service-steps", json.dumps(steps))
    ironic.wait_for_state(node, "service wait", timeout=60)
    with start_ipa(workdir, ironic.endpoint) as agent:
        if during is not None:
            during(agent)
        try:
            record = ironic.wait_for_state(node, ("active", "service failed"), timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- agent log ---\n{agent.log_tail()}") from None
    return StepRun(node=record, agent_log=agent.log())


def abort_to_active(ironic: IronicServer, node: str) -> None:
    """``baremetal node abort`` from ``service failed``; waits for ``active``."""
    ironic.cli("node", "abort", node)
    ironic.wait_for_state(node, "active", timeout=120)
