"""Building real test disks: partition tables, loop devices, filesystems.

Everything runs on files in a temporary folder; each partition gets its own
loop device (``losetup -o OFFSET --sizelimit SIZE``: ``-P`` makes no partition
nodes on these machines), always detached again. Needs root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from pathlib import Path

from tests import blockdev

MIB = 1 << 20
#: Size of one stale-pattern block; each starts with the session's marker.
PATTERN_BLOCK = 4096


def run(*args: str | os.PathLike[str], **kwargs: object) -> str:
    """Runs a command (text in and out), failing with its stderr when it fails; returns stdout."""
    return blockdev.run(*args, text=True, **kwargs).stdout


#: A loop device over part of an image, always detached (``read_only=True`` for sources).
loop = blockdev.loop_device
#: A mount with options for the duration of the block.
mounted = blockdev.mounted


@dataclasses.dataclass
class Part:
    """One partition of a built disk."""

    number: int
    start: int
    size: int
    #: ``ext4``, ``xfs``, ``ext2``, ``swap``, ``vfat``, ``bios`` or ``raw``.
    kind: str


@dataclasses.dataclass
class Disk:
    """A disk image and what was put on it."""

    path: Path
    size: int
    table: str
    parts: list[Part]

    def part(self, kind: str) -> Part:
        return next(p for p in self.parts if p.kind == kind)


def table_parts(path: Path) -> list[tuple[int, int, int]]:
    """(number, start byte, size bytes) of every partition, from sfdisk."""
    table = json.loads(run("sfdisk", "-J", path))["partitiontable"]
    out = []
    for p in table["partitions"]:
        number = int(p["node"][len(str(path)) :])
        out.append((number, p["start"] * 512, p["size"] * 512))
    return out


def pattern(marker: bytes, size: int) -> bytes:
    """``size`` bytes of random blocks, each starting with ``marker``."""
    rng = random.Random(marker)
    block_body = PATTERN_BLOCK - len(marker)
    return b"".join(marker + rng.randbytes(block_body) for _ in range(size // PATTERN_BLOCK))


def populate(root: Path, seed: int) -> None:
    """A small but varied tree: sizes, holes, links, owners, modes, xattrs."""
    rng = random.Random(seed)
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("node-1\n")
    (root / "etc/config.txt").write_text("key = value\n" * 5000)
    (root / "home/user/.ssh").mkdir(parents=True)
    os.chmod(root / "home/user/.ssh", 0o700)
    (root / "home/user/.ssh/id_ed25519").write_bytes(rng.randbytes(411))
    os.chmod(root / "home/user/.ssh/id_ed25519", 0o600)
    os.chown(root / "home/user", 1001, 1002)
    os.chown(root / "home/user/.ssh/id_ed25519", 1001, 1002)
    data = root / "var/lib/data"
    data.mkdir(parents=True)
    for i, size in enumerate([0, 1, 4095, 4096, 4097, 65536, 1 << 20, 10 << 20]):
        (data / f"blob{i}").write_bytes(rng.randbytes(size))
    many = root / "var/many"
    many.mkdir()
    for i in range(400):
        (many / f"f{i:04d}-{'x' * (i % 200)}").write_bytes(rng.randbytes(i * 37))
    with open(root / "var/sparse", "wb") as f:
        f.seek(40 << 20)
        f.write(b"tail after a hole")
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "usr/bin/tool", 0o4755)
    os.symlink("../etc/hostname", root / "usr/hostname-link")
    os.symlink("/nonexistent/target", root / "usr/dangling")
    os.link(root / "etc/hostname", root / "etc/hostname.hard")
    os.setxattr(root / "etc/config.txt", "user.origin", b"test-suite")
    os.setxattr(root / "usr/bin/tool", "trusted.tag", rng.randbytes(40))
    os.mkfifo(root / "var/fifo")


def write_stale(root: Path, marker: bytes, size: int) -> None:
    """Writes a file of the marker pattern, syncs it to disk and deletes it:
    its blocks are free but still hold the pattern."""
    stale = root / "stale.bin"
    with open(stale, "wb") as f:
        f.write(pattern(marker, size))
        f.flush()
        os.fsync(f.fileno())
    os.sync()
    stale.unlink()
    os.sync()


def mkfs(kind: str, device: str, *, rmapbt: bool = False) -> None:
    if kind in ("ext4", "ext2"):
        # nodiscard: a discard would punch the stale data out of the file.
        run(f"mkfs.{kind}", "-q", "-F", "-E", "nodiscard", device)
    elif kind == "xfs":
        run("mkfs.xfs", "-q", "-f", "-K", "-m", f"rmapbt={int(rmapbt)}", device)
    else:
        raise ValueError(kind)


def build_disk(path: Path, table: str, fs: str, marker: bytes, *, rmapbt: bool = False) -> Disk:
    """Builds a 448 MiB disk: GPT (BIOS boot, ESP, swap, ``fs``, free tail) or
    MBR (``fs`` primary, extended with swap and ext2 logical partitions),
    with files written, stale deleted data in free blocks and in swap.
    ``rmapbt``: an XFS with the reverse-mapping btree."""
    size = 448 * MIB
    with open(path, "wb") as f:
        f.truncate(size)
    if table == "gpt":
        run("sgdisk", "-o", "-n1:2048:+1M", "-t1:ef02", "-n2:0:+32M", "-t2:ef00",
            "-n3:0:+64M", "-t3:8200", "-n4:0:+320M", "-t4:8300", path)
        kinds = {1: "bios", 2: "vfat", 3: "swap", 4: fs}
    else:
        script = "label: dos\n,320M,83,*\n,,5\n,64M,82\n,40M,83\n"
        run("sfdisk", "-q", path, input=script)
        kinds = {1: fs, 5: "swap", 6: "ext2"}
    parts = [Part(n, start, sz, kinds[n]) for n, start, sz in table_parts(path) if n in kinds]
    with open(path, "r+b") as f:
        for p in parts:
            f.seek(p.start)
            if p.kind == "swap":
                # Swapped-out memory: must never reach the image.
                f.write(pattern(marker, p.size))
            elif p.kind == "bios":
                # A boot loader stand-in: must reach the image unchanged.
                f.write(random.Random(11).randbytes(p.size))
    for p in parts:
        if p.kind == "bios":
            continue
        with loop(path, p.start, p.size) as dev:
            if p.kind == "swap":
                run("mkswap", "-L", "swap0", dev)
            elif p.kind == "vfat":
                run("mkfs.vfat", "-n", "ESP", dev)
            else:
                mkfs(p.kind, dev, rmapbt=rmapbt)
                with mounted(dev, path.parent / f"mnt{p.number}", "rw") as mnt:
                    populate(mnt, seed=p.number)
                    write_stale(mnt, marker, 24 * MIB if p.kind != "ext2" else 4 * MIB)
    esp = [p for p in parts if p.kind == "vfat"]
    if esp:
        # The host kernel has no vfat: write the ESP with mtools.
        boot = path.parent / "BOOTX64.EFI"
        boot.write_bytes(random.Random(7).randbytes(300_000))
        run("mmd", "-i", f"{path}@@{esp[0].start}", "::/EFI", "::/EFI/BOOT")
        run("mcopy", "-i", f"{path}@@{esp[0].start}", boot, "::/EFI/BOOT/BOOTX64.EFI")
    return Disk(path, size, table, parts)


def find_marker(path: Path, marker: bytes, start: int = 0, end: int | None = None) -> int | None:
    """Byte offset of the first ``marker`` in ``path[start:end]``, or None."""
    chunk = 64 * MIB
    end = os.path.getsize(path) if end is None else end
    with open(path, "rb") as f:
        pos = start
        while pos < end:
            f.seek(pos)
            buf = f.read(min(chunk + len(marker), end - pos))
            hit = buf.find(marker)
            if hit >= 0:
                return pos + hit
            pos += chunk
    return None


def same_bytes(a: Path, b: Path, start: int, size: int) -> bool:
    """Whether ``a`` and ``b`` hold the same ``size`` bytes at ``start``."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(start)
        fb.seek(start)
        left = size
        while left:
            n = min(left, 8 * MIB)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


def is_zero(path: Path, start: int, size: int) -> bool:
    with open(path, "rb") as f:
        f.seek(start)
        left = size
        while left:
            n = min(left, 8 * MIB)
            if f.read(n).strip(b"\0"):
                return False
            left -= n
    return True


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MIB):
            h.update(block)
    return h.hexdigest()


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a restore must preserve, per path: type, mode, owner,
    size, link target, xattrs, mtime and content hash."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ([""] if dirpath == str(root) else []):
            path = Path(dirpath, name) if name else Path(dirpath)
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            xattrs = {k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path, follow_symlinks=False)}
            target = os.readlink(path) if os.path.islink(path) else None
            digest = None
            if path.is_file() and not path.is_symlink():
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    while block := f.read(MIB):
                        h.update(block)
                digest = h.hexdigest()
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_mtime_ns, target,
                        sorted(xattrs.items()), digest)
    return out


def ro_options(kind: str, *, copy: bool) -> str:
    """Read-only mount options that never write (no journal or log replay);
    a copy of an XFS filesystem has the same UUID, which XFS refuses twice."""
    if kind == "xfs":
        return "ro,norecovery" + (",nouuid" if copy else "")
    if kind == "ext2":
        return "ro"  # no journal, and the ext4 driver refuses noload for it
    return "ro,noload"


def ext_lie_about(device: str, path: str) -> list[int]:
    """Makes the ext block bitmaps lie consistently about the file ``path``:
    its blocks are marked free and as many free blocks of the same groups are
    marked in use, so every group's free count still matches its bitmap and
    debugfs rewrites valid bitmap and descriptor checksums. Returns the
    file's blocks (``e2fsck -fn`` then reports the bitmap differences)."""
    blocks = [int(b) for b in run("debugfs", "-R", f"blocks {path}", device).split()]
    assert blocks, f"{path} has no blocks"
    layout = run("dumpe2fs", device)
    per_group = int(layout.split("Blocks per group:")[1].split()[0])
    first = int(layout.split("First block:")[1].split()[0])
    commands = []
    for group in sorted({(b - first) // per_group for b in blocks}):
        mine = [b for b in blocks if (b - first) // per_group == group]
        section = layout.split(f"\nGroup {group}:")[1].split("\nGroup ")[0]
        free: list[int] = []
        for run_ in section.split("\n  Free blocks: ")[1].splitlines()[0].split(", "):
            if run_:
                lo, _, hi = run_.partition("-")
                free.extend(range(int(lo), int(hi or lo) + 1))
        assert len(free) >= len(mine), f"group {group} has too few free blocks to swap"
        commands += [f"freeb {b}" for b in mine] + [f"setb {b}" for b in free[: len(mine)]]
    run("debugfs", "-w", "-f", "-", device, input="\n".join(commands) + "\n")
    return blocks


def xfs_lie_about(device: str, ag: int, start: int, end: int, *, by_size: bool) -> None:
    """Moves the free extent of AG ``ag`` that starts at block ``end`` back to
    ``start``, over a file's blocks ``start..end``, in the by-block btree
    (and the by-size one with ``by_size``): same lengths, so the AGF's free
    counts still match; xfs_db recomputes every CRC it writes."""
    def records(tree: str) -> list[tuple[int, int]]:
        out = run("xfs_db", "-r", "-c", f"agf {ag}", "-c", f"addr {tree}root", "-c", "print recs", device)
        recs = [line.split(":", 1)[1].strip("[] ") for line in out.splitlines()[1:] if ":" in line]
        return [tuple(int(v) for v in r.split(",")) for r in recs]  # type: ignore[misc]
    for tree in ("bno", "cnt") if by_size else ("bno",):
        starts = [s for s, _ in records(tree)]
        assert end in starts, f"no free extent of AG {ag} starts at {end} in the {tree}bt: {records(tree)}"
        index = starts.index(end) + 1
        run("xfs_db", "-x", "-c", f"agf {ag}", "-c", f"addr {tree}root",
            "-c", f"write recs[{index}].startblock {start}", device)
