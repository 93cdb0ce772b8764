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


@pytest.fixture(scope="session")
def uefi_grub_disk(lab_requirements: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw UEFI/GRUB Debian disk, built once per test session (read it, do not write it)."""
    return build.uefi_grub_disk(tmp_path_factory.mktemp("lab") / "uefi-grub.raw")


@pytest.fixture
def disk_copy(tmp_path: Path) -> Callable[[Path], Path]:
    """Copies a lab disk into the test's folder (sparse), for a test that boots it writable."""
    def copy(disk: Path) -> Path:
        out = tmp_path / disk.name
        subprocess.run(["cp", "--sparse=always", str(disk), str(out)], check=True)
        return out
    return copy
