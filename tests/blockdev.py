"""Commands, loop devices and mounts for tests that build real disks (root only).

Shared by the generic fixtures (``tests/conftest.py``) and the suites that
build their own disks (``tests/fs_aware/disks.py``, ``tests/cli``). Everything
runs over files in temporary folders; each helper undoes what it did, even
when the block inside fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


def run(*args: object, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command and fails with its stderr when it fails."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, **kwargs)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
        raise AssertionError(f"{[str(a) for a in args]} exited {proc.returncode}: {stderr}")
    return proc


def forget_partitions(device: str) -> None:
    """Deletes the kernel's partitions of loop device ``device``, if it has any.

    Partition-table tools run on a whole-disk loop device (the agent's
    deploy runs ``partprobe``; ``parted`` is installed for it) make the kernel
    add the device's partitions, and the kernel keeps them after the device
    is detached. Seen in a full run: loop0, used by the suites before
    tests/fs_aware, still had loop0p1 when fs_aware took it, and
    ``mkfs.vfat`` refused a device "with partitions". ``partx -d`` deletes
    them, attached or not.
    """
    name = Path(device).name
    if any(Path("/sys/block", name).glob(f"{name}p*")):
        subprocess.run(["partx", "-d", device], check=False, capture_output=True)


def detach_loop(device: str) -> None:
    """Detaches loop device ``device``, first deleting partitions a tool added to it."""
    forget_partitions(device)
    subprocess.run(["losetup", "--detach", device], check=False)


@contextlib.contextmanager
def loop_device(image: str | os.PathLike[str], offset: int, size: int, *,
                read_only: bool = False) -> Iterator[str]:
    """A loop device over ``size`` bytes of ``image`` from ``offset``, always detached.

    ``losetup -P`` makes no partition nodes on this kind of machine, so every
    partition gets its own device with ``--offset``/``--sizelimit``.
    """
    args: list[object] = ["losetup", "--find", "--show", "--offset", offset, "--sizelimit", size]
    if read_only:
        args.append("--read-only")
    device = run(*args, image, text=True).stdout.strip()
    try:
        # Partitions another user of the device left behind are not ours.
        forget_partitions(device)
        yield device
    finally:
        detach_loop(device)


@contextlib.contextmanager
def mounted(device: str, where: Path, options: str | None = None, fstype: str | None = None) -> Iterator[Path]:
    """Mounts ``device`` on ``where`` (with ``-o options`` and ``-t fstype`` if
    given) for the block; always unmounts."""
    where.mkdir(parents=True, exist_ok=True)
    run("mount", *(["-o", options] if options is not None else []), *(["-t", fstype] if fstype else []),
        device, where)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
