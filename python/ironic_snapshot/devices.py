"""Checks that a device is safe to capture: a block device nothing mounts.

A mounted filesystem changes under the capture and gives an inconsistent
image, so the step refuses a device if it, one of its partitions or a device
stacked on it (its holders, such as dm or md devices) is mounted or used as
swap. Mounts are found by device number in ``/proc/self/mountinfo`` (and by
source path, for filesystems such as btrfs that report an anonymous device
number), in ``/proc/swaps``, and with ``lsblk``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from ironic_python_agent import errors

SYS_BLOCK = Path("/sys/dev/block")


def _devno(path: str) -> str | None:
    """``major:minor`` of a block device path, or ``None``."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def related_devnos(devno: str) -> set[str]:
    """The device, its partitions and everything stacked on them.

    :param devno: ``major:minor`` of a block device.
    :returns: ``major:minor`` of the device and of all partitions and holders,
        recursively.
    """
    seen: set[str] = set()
    todo = [devno]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        node = SYS_BLOCK / current
        if not node.exists():
            continue
        node = node.resolve()
        children = [p for p in node.iterdir() if (p / "partition").exists()]
        holders_dir = node / "holders"
        if holders_dir.is_dir():
            children.extend(p.resolve() for p in holders_dir.iterdir())
        for child in children:
            try:
                todo.append((child / "dev").read_text().strip())
            except OSError:
                continue
    return seen


def _mountinfo_users(devnos: set[str], paths: set[str]) -> list[str]:
    """Mount points of filesystems on ``devnos`` or with a source in ``paths``."""
    found: list[str] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        source = fields[sep + 2] if len(fields) > sep + 2 else ""
        if fields[2] in devnos or os.path.realpath(source) in paths:
            # Octal escapes such as \040 stand for spaces in mount points.
            found.append(fields[4].encode().decode("unicode_escape"))
    return found


def _swap_users(devnos: set[str], paths: set[str]) -> list[str]:
    """Active swap areas on ``devnos``."""
    found: list[str] = []
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        name = line.split()[0] if line.split() else ""
        if _devno(name) in devnos or os.path.realpath(name) in paths:
            found.append(f"swap on {name}")
    return found


def _lsblk_users(device: str) -> list[str]:
    """Mount points ``lsblk`` reports for the device and its children."""
    try:
        result = subprocess.run(
            ["lsblk", "--json", "--paths", "--output", "NAME,MOUNTPOINT", device],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    try:
        tree = json.loads(result.stdout)
    except ValueError:
        return []
    found: list[str] = []
    stack = list(tree.get("blockdevices") or [])
    while stack:
        entry = stack.pop()
        if entry.get("mountpoint"):
            found.append(f"{entry['mountpoint']} ({entry.get('name')})")
        stack.extend(entry.get("children") or [])
    return found


def check_capturable(device: str) -> None:
    """Refuse anything but an unmounted, unused block device.

    :param device: path of the device.
    :raises ironic_python_agent.errors.BlockDeviceError: the path does not
        exist, is not a block device, or something on it is mounted or used
        as swap.
    """
    try:
        st = os.stat(device)
    except FileNotFoundError:
        raise errors.BlockDeviceError(
            f"Device {device} does not exist: pass the path of the disk to "
            "capture as the device argument, or fix the node's root device "
            "hints (properties/root_device)"
        ) from None
    except OSError as exc:
        raise errors.BlockDeviceError(
            f"Device {device} cannot be examined: {exc.strerror}"
        ) from exc
    if not stat.S_ISBLK(st.st_mode):
        raise errors.BlockDeviceError(
            f"{device} is not a block device: pass the path of a disk such "
            "as /dev/sda"
        )
    devno = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    devnos = related_devnos(devno)
    paths = {os.path.realpath(device)}
    for number in devnos:
        node = SYS_BLOCK / number
        if node.exists():
            paths.add(f"/dev/{node.resolve().name}")
    users = _mountinfo_users(devnos, paths) + _swap_users(devnos, paths)
    users += [u for u in _lsblk_users(device) if u.split(" (")[0] not in users]
    if users:
        raise errors.BlockDeviceError(
            f"Device {device} is in use: {', '.join(sorted(set(users)))}. "
            "A mounted disk changes during the capture and gives an "
            "inconsistent image: unmount it (and stop swap on it), or run "
            "the step from the ramdisk where the disk is not mounted"
        )
