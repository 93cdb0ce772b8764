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
  ``mke2fs -d``: no loop device, no mount, no host kernel involved;
- :func:`uefi_systemd_boot_disk`: the same with systemd-boot, the kernel and
  initrd on the ESP;
- :func:`bios_grub_disk`: an MBR disk with GRUB's boot sector and core image
  in the gap before the first partition, for SeaBIOS.

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

__all__ = ["PROMPT", "ROOT_LABEL", "bios_grub_disk", "cache_dir", "debian_tree", "files_disk",
           "uefi_grub_disk", "uefi_systemd_boot_disk"]

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


#: Kernel command line of every lab disk.
# no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check
# can time out and panic ("IO-APIC + timer doesn't work"), seen once here.
CMDLINE = f"root=LABEL={ROOT_LABEL} ro console=ttyS0,115200 quiet no_timer_check"


def _grub_cfg(work: Path) -> Path:
    """A GRUB config that boots the root filesystem found by its label."""
    cfg = work / "grub.cfg"
    cfg.write_text(
        "set timeout=0\n"
        f"search --no-floppy --label {ROOT_LABEL} --set=root\n"
        f"linux /boot/vmlinuz {CMDLINE}\n"
        "initrd /boot/initrd.img\n"
        "boot\n")
    return cfg


def _root_image(out: Path, root_mib: int) -> Path:
    """The ext4 root filesystem made from :func:`debian_tree` by ``mke2fs -d``."""
    _run("mke2fs", "-q", "-t", "ext4", "-L", ROOT_LABEL, "-d", debian_tree(),
         "-E", "root_owner=0:0", out, f"{root_mib}M")
    return out


def _esp_image(out: Path, esp_mib: int, files: dict[str, Path]) -> Path:
    """A FAT32 ESP holding ``files`` (ESP path -> host file), written with mtools."""
    _run("mkfs.fat", "-F", "32", "-n", "ESP", "-C", out, esp_mib * 1024)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    folders = sorted({str(Path(p).parent) for p in files if str(Path(p).parent) != "."},
                     key=len)
    made: set[str] = set()
    for folder in folders:
        parts = Path(folder).parts
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            if sub not in made:
                _run("mmd", "-i", out, f"::/{sub}", env=env)
                made.add(sub)
    for dest, src in files.items():
        _run("mcopy", "-i", out, src, f"::/{dest}", env=env)
    return out


def _gpt_disk(out: Path, esp: Path, root: Path) -> Path:
    """A GPT disk: partition 1 the ESP, partition 2 the root (``dd``'d in place)."""
    esp_mib = esp.stat().st_size >> 20
    total = 1 + esp_mib + (root.stat().st_size >> 20) + 1
    out.unlink(missing_ok=True)
    with open(out, "wb") as disk:
        disk.truncate(total << 20)
    # No -q: `sgdisk -q -n` returned 0 and wrote nothing on this kind of machine.
    _run("sgdisk", "-n", f"1:2048:+{esp_mib}M", "-t", "1:ef00", "-c", "1:ESP",
         "-n", "2:0:0", "-t", "2:8304", "-c", "2:root", out)
    for number, part in ((1, esp), (2, root)):
        _place(out, part, _partition_start(out, number))
    return out


def _place(disk: Path, part: Path, start: int) -> None:
    """Writes ``part`` into ``disk`` at byte ``start`` (holes stay holes)."""
    _run("dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={start}", "oflag=seek_bytes",
         "conv=notrunc,sparse", "status=none")


def uefi_grub_disk(out: Path, *, root_mib: int = 1536, esp_mib: int = 64) -> Path:
    """Writes a raw GPT disk to ``out``: FAT ESP with GRUB, ext4 root from :func:`debian_tree`.

    Nothing is mounted: mtools fills the ESP, ``mke2fs -d`` the root, ``dd``
    places both. Returns ``out``.
    """
    with tempfile.TemporaryDirectory(prefix="lab-disk-", dir=out.parent) as tmp:
        work = Path(tmp)
        grub = work / "BOOTX64.EFI"
        _run("grub-mkstandalone", "-O", "x86_64-efi", "-o", grub,
             "--modules=part_gpt ext2 search_label linux normal",
             f"boot/grub/grub.cfg={_grub_cfg(work)}")
        esp = _esp_image(work / "esp.img", esp_mib, {"EFI/BOOT/BOOTX64.EFI": grub})
        return _gpt_disk(out, esp, _root_image(work / "root.img", root_mib))


#: systemd-boot's EFI binary on this machine (Debian ``systemd-boot-efi``).
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")


def uefi_systemd_boot_disk(out: Path, *, root_mib: int = 1536, esp_mib: int = 128) -> Path:
    """Writes a raw GPT disk to ``out`` booted by systemd-boot (kernel and initrd on the ESP)."""
    tree = debian_tree()
    with tempfile.TemporaryDirectory(prefix="lab-disk-", dir=out.parent) as tmp:
        work = Path(tmp)
        loader = work / "loader.conf"
        loader.write_text("default debian.conf\ntimeout 0\n")
        entry = work / "debian.conf"
        entry.write_text(f"title Debian\nlinux /vmlinuz\ninitrd /initrd.img\noptions {CMDLINE}\n")
        esp = _esp_image(work / "esp.img", esp_mib, {
            "EFI/BOOT/BOOTX64.EFI": SYSTEMD_BOOT,
            "loader/loader.conf": loader,
            "loader/entries/debian.conf": entry,
            "vmlinuz": (tree / "boot" / "vmlinuz").resolve(),
            "initrd.img": (tree / "boot" / "initrd.img").resolve(),
        })
        return _gpt_disk(out, esp, _root_image(work / "root.img", root_mib))


def bios_grub_disk(out: Path, *, root_mib: int = 1536) -> Path:
    """Writes a raw MBR disk to ``out`` for BIOS: GRUB in the MBR and the gap, ext4 partition 1.

    What ``grub-install`` would do on a device, done on a file: ``boot.img``
    (its first 440 bytes, the partition table kept) in sector 0, which loads
    sector 1; ``core.img`` from sector 1, whose first sector (``diskboot``)
    loads the rest from sector 2 on, as grub-mkimage's default block list says.
    """
    with tempfile.TemporaryDirectory(prefix="lab-disk-", dir=out.parent) as tmp:
        work = Path(tmp)
        root = _root_image(work / "root.img", root_mib)
        core = work / "core.img"
        early = work / "early.cfg"
        early.write_text(f"search --no-floppy --label {ROOT_LABEL} --set=root\n"
                         "set prefix=($root)/boot/grub\n"
                         f"linux /boot/vmlinuz {CMDLINE}\ninitrd /boot/initrd.img\nboot\n")
        _run("grub-mkimage", "-O", "i386-pc", "-o", core, "-c", early, "-p", "/boot/grub",
             "biosdisk", "part_msdos", "ext2", "search", "search_label", "linux", "normal")
        if core.stat().st_size > (2048 - 1) * 512:
            raise RuntimeError(f"GRUB core image ({core.stat().st_size} B) does not fit the 1 MiB gap")
        out.unlink(missing_ok=True)
        with open(out, "wb") as disk:
            disk.truncate((1 + root_mib) << 20)
        _run("sfdisk", "-q", out, input="label: dos\nstart=2048, type=83, bootable\n")
        boot_img = Path("/usr/lib/grub/i386-pc/boot.img").read_bytes()
        with open(out, "r+b") as disk:
            disk.write(boot_img[:440])
            disk.seek(512)
            disk.write(core.read_bytes())
        _place(out, root, 2048 * 512)
    return out
def _partition_start(disk: Path, number: int) -> int:
    """First byte of partition ``number`` as sgdisk laid it out."""
    info = _run("sgdisk", "-i", number, disk).stdout
    match = re.search(r"First sector: (\d+)", info)
    if not match:
        raise RuntimeError(f"sgdisk shows no partition {number} on {disk}: {info}")
    return int(match.group(1)) * 512


def files_disk(out: Path, files: dict[str, Path], *, size_mib: int = 128) -> Path:
    """A raw disk holding one ext4 filesystem (no partition table) with ``files``
    (name in the filesystem -> host file): how the lab hands binaries to a guest,
    which mounts it (``mount -o ro /dev/vdb /mnt``). Made by ``mke2fs -d``, nothing mounted."""
    with tempfile.TemporaryDirectory(prefix="lab-files-", dir=out.parent) as tmp:
        for name, src in files.items():
            shutil.copy2(src, Path(tmp) / name)
        out.unlink(missing_ok=True)
        _run("mke2fs", "-q", "-t", "ext4", "-L", "lab-files", "-d", tmp, out, f"{size_mib}M")
    return out
