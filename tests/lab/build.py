"""Builds the guest lab's disks: real Debian bookworm systems, without mounting anything.

The lab runs real guests under qemu (TCG: KVM does not work on these machines)
for the tests that must not touch this machine's own kernel: booting captured
images, kexec, LVM and freeze. Everything here is built from Debian's
packages:

- :func:`debian_tree`: ``debootstrap --variant=minbase bookworm`` plus a
  kernel, systemd and the tools later tests need, configured for a serial
  console that logs ``root`` in by itself (prompt :data:`PROMPT`);
- :func:`uefi_grub_disk`: that tree as a GPT disk with a FAT ESP (written
  with mtools) holding a standalone GRUB, and an ext4 root made by
  ``mke2fs -d``: no loop device, no mount, no host kernel involved.

Results are cached outside the repository (``IRONIC_SNAPSHOT_LAB_CACHE``,
default ``/var/cache/ironic-snapshot-lab``) under a name that changes with the
recipe, so a CI run builds them once and later runs on the same machine reuse
them. Building the tree takes about four minutes; a disk from it, seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PROMPT", "ROOT_LABEL", "cache_dir", "debian_tree", "uefi_grub_disk"]

#: Shell prompt of the guest's root login on the serial console.
PROMPT = "lab-guest# "

#: Filesystem label of the guest's root filesystem (GRUB and fstab find it by it).
ROOT_LABEL = "lab-root"

#: Packages beyond minbase: boot, console login, and what the kexec, LVM,
#: freeze and writer tests run inside the guest.
PACKAGES = [
    "systemd-sysv", "udev", "linux-image-cloud-amd64", "initramfs-tools", "kmod",
    "procps", "iproute2", "e2fsprogs", "xfsprogs", "lvm2", "sqlite3", "util-linux",
]

#: Changes whenever the recipe below changes what it builds.
RECIPE = "1:" + ",".join(PACKAGES)


def cache_dir() -> Path:
    """Folder of built lab artefacts (created on first use)."""
    path = Path(os.environ.get("IRONIC_SNAPSHOT_LAB_CACHE", "/var/cache/ironic-snapshot-lab"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(*args: object, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command; fails with its output when it fails."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{[str(a) for a in args]} exited {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Serialises builders of one artefact (parallel test sessions share the cache)."""
    with open(cache_dir() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _mirror() -> str:
    """The Debian mirror apt already uses (the only one reachable here)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        text = path.read_text()
        if re.search(r"^Suites:.*\bbookworm\b", text, re.M):
            match = re.search(r"^URIs:\s*(\S+)", text, re.M)
            if match:
                return match.group(1)
    listed = Path("/etc/apt/sources.list")
    if listed.exists():
        match = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\b", listed.read_text(), re.M)
        if match:
            return match.group(1)
    raise RuntimeError("No bookworm mirror in apt's sources: the lab needs one for debootstrap")


def _configure(root: Path) -> None:
    """Console autologin, fstab, hostname and a prompt the lab can wait for."""
    (root / "etc" / "hostname").write_text("lab-guest\n")
    (root / "etc" / "fstab").write_text(
        f"LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n")
    getty = root / "etc" / "systemd" / "system" / "serial-getty@ttyS0.service.d"
    getty.mkdir(parents=True, exist_ok=True)
    # Root logs in on the serial console by itself: the tests type commands there.
    (getty / "autologin.conf").write_text(
        "[Service]\nExecStart=\n"
        "ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200 %I dumb\n")
    (root / "root" / ".profile").write_text(
        f"export PS1='{PROMPT}'\nexport TERM=dumb\nstty -echo 2>/dev/null\n")
    _run("chroot", root, "passwd", "-d", "root")
    # No network wait, no timers that write at random while a test measures.
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                 "fstrim.timer"):
        link = root / "etc" / "systemd" / "system" / f"{unit}"
        if not link.exists():
            link.symlink_to("/dev/null")


def debian_tree() -> Path:
    """A configured Debian bookworm root tree (cached; about four minutes to build)."""
    key = hashlib.sha256(RECIPE.encode()).hexdigest()[:12]
    tree = cache_dir() / f"bookworm-{key}"
    with _locked(tree.name):
        if (tree / ".complete").exists():
            return tree
        shutil.rmtree(tree, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="tree-", dir=cache_dir()))
        try:
            _run("debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 "bookworm", work, _mirror(), timeout=1800)
            _configure(work)
            # Fixed names for the kernel and initrd: the GRUB config needs no version.
            kernels = sorted((work / "boot").glob("vmlinuz-*"))
            initrds = sorted((work / "boot").glob("initrd.img-*"))
            if not kernels or not initrds:
                raise RuntimeError(f"debootstrap left no kernel or initrd in {work / 'boot'}")
            (work / "vmlinuz").unlink(missing_ok=True)
            (work / "initrd.img").unlink(missing_ok=True)
            shutil.rmtree(work / "var" / "cache" / "apt" / "archives", ignore_errors=True)
            (work / "boot" / "vmlinuz").symlink_to(kernels[-1].name)
            (work / "boot" / "initrd.img").symlink_to(initrds[-1].name)
            (work / ".complete").write_text(RECIPE + "\n")
            work.rename(tree)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tree


def _grub_efi(out: Path, work: Path) -> None:
    """A standalone GRUB EFI binary whose embedded config boots the root by label."""
    cfg = work / "grub.cfg"
    cfg.write_text(
        "set timeout=0\n"
        f"search --no-floppy --label {ROOT_LABEL} --set=root\n"
        f"linux /boot/vmlinuz root=LABEL={ROOT_LABEL} ro console=ttyS0,115200 quiet\n"
        "initrd /boot/initrd.img\n"
        "boot\n")
    _run("grub-mkstandalone", "-O", "x86_64-efi", "-o", out,
         "--modules=part_gpt ext2 search_label linux normal", f"boot/grub/grub.cfg={cfg}")


def uefi_grub_disk(out: Path, *, root_mib: int = 1536, esp_mib: int = 64) -> Path:
    """Writes a raw GPT disk to ``out``: FAT ESP with GRUB, ext4 root from :func:`debian_tree`.

    Nothing is mounted: mtools fills the ESP, ``mke2fs -d`` the root, ``dd``
    places both. Returns ``out``.
    """
    tree = debian_tree()
    with tempfile.TemporaryDirectory(prefix="lab-disk-", dir=out.parent) as tmp:
        work = Path(tmp)
        esp = work / "esp.img"
        _run("mkfs.fat", "-F", "32", "-n", "ESP", "-C", esp, esp_mib * 1024)
        _grub_efi(work / "BOOTX64.EFI", work)
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        _run("mmd", "-i", esp, "::/EFI", "::/EFI/BOOT", env=env)
        _run("mcopy", "-i", esp, work / "BOOTX64.EFI", "::/EFI/BOOT/BOOTX64.EFI", env=env)
        root = work / "root.img"
        _run("mke2fs", "-q", "-t", "ext4", "-L", ROOT_LABEL, "-d", tree, "-E", "root_owner=0:0",
             root, f"{root_mib}M")
        out.unlink(missing_ok=True)
        total = 1 + esp_mib + root_mib + 1
        with open(out, "wb") as disk:
            disk.truncate(total << 20)
        # No -q: `sgdisk -q -n` returned 0 and wrote nothing on this kind of machine.
        _run("sgdisk", "-n", f"1:2048:+{esp_mib}M", "-t", "1:ef00", "-c", "1:ESP",
             "-n", "2:0:0", "-t", "2:8304", "-c", "2:root", out)
        for number, part in ((1, esp), (2, root)):
            start = _partition_start(out, number)
            _run("dd", f"if={part}", f"of={out}", "bs=1M", f"seek={start}", "oflag=seek_bytes",
                 "conv=notrunc,sparse", "status=none")
    return out


def _partition_start(disk: Path, number: int) -> int:
    """First byte of partition ``number`` as sgdisk laid it out."""
    info = _run("sgdisk", "-i", number, disk).stdout
    match = re.search(r"First sector: (\d+)", info)
    if not match:
        raise RuntimeError(f"sgdisk shows no partition {number} on {disk}: {info}")
    return int(match.group(1)) * 512
