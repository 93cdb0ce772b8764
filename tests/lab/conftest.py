"""Fixtures of the guest lab: built Debian disks and booted guests (root, qemu, TCG).

The lab's disks are built once per machine (cached outside the repository by
``tests/lab/build.py``) and copied per test, so a test may write its copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lab import build

_TOOLS = ("qemu-system-x86_64", "debootstrap", "grub-mkstandalone", "mcopy", "sgdisk", "mkfs.fat")


@pytest.fixture(scope="session")
def lab_requirements() -> None:
    """The lab needs root and its tools: a missing one fails with what to run."""
    if os.geteuid() != 0:
        pytest.skip("the guest lab needs root (debootstrap, qemu)")
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing or not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists():
        pytest.fail(f"guest lab tools missing ({', '.join(missing) or 'OVMF'}): run tests/setup.sh")


#: The lab's bootable disk kinds: builder and firmware.
DISK_KINDS = {
    "uefi-grub": (build.uefi_grub_disk, "uefi"),
    "uefi-systemd-boot": (build.uefi_systemd_boot_disk, "uefi"),
    "bios-grub": (build.bios_grub_disk, "bios"),
}

_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="session")
def lab_disk(lab_requirements: None, tmp_path_factory: pytest.TempPathFactory
             ) -> Callable[[str], tuple[Path, str]]:
    """``lab_disk(kind)``: a raw Debian disk of that kind (built once per session) and its firmware.

    Read it, do not write it: boot a :func:`disk_copy` instead.
    """
    def get(kind: str) -> tuple[Path, str]:
        builder, firmware = DISK_KINDS[kind]
        if kind not in _BUILT:
            _BUILT[kind] = builder(tmp_path_factory.mktemp("lab") / f"{kind}.raw")
        return _BUILT[kind], firmware
    return get


@pytest.fixture
def disk_copy(tmp_path: Path) -> Callable[[Path], Path]:
    """Copies a lab disk into the test's folder (sparse), for a test that boots it writable."""
    def copy(disk: Path) -> Path:
        out = tmp_path / disk.name
        subprocess.run(["cp", "--sparse=always", str(disk), str(out)], check=True)
        return out
    return copy
