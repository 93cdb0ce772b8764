"""End-to-end tests of filesystem-aware capture (free-space skipping).

Real disks are built on loop devices (GPT and MBR; ext4, XFS, ext2, swap,
ESP, BIOS boot), files are written and a file of a recognisable pattern is
written, synced and deleted so free blocks hold stale data. The CLI captures
the disk; the image is judged by ``qemu-img check``, restored with
``qemu-img convert -O raw`` and then:

- ``e2fsck -fn`` / ``xfs_repair -n`` find no problem in the restored filesystems,
- both trees, mounted read-only, are equal: types, modes, owners, sizes,
  link targets, xattrs, mtimes and content hashes,
- gaps, partition tables, boot partitions and whole-copied partitions are
  byte-identical, the swap area keeps only its header page,
- the stale pattern is nowhere in the restored disk (it is in the source),
- the source is unchanged (sha256 before and after).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from . import disks
from .disks import MIB, Disk


def capture(cli: Path, disk: Path, out: Path, *extra: str) -> dict:
    """Captures ``disk`` as IPA would: a block device (a read-only loop device
    over the whole disk file), opened read-only by the CLI."""
    with disks.loop(disk, 0, disk.stat().st_size, read_only=True) as device:
        proc = subprocess.run(
            [cli, "capture", device, "-o", out, "--json", *extra], capture_output=True, text=True, check=False
        )
    assert proc.returncode == 0, f"capture failed ({proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout)


def restore(image: Path, raw: Path) -> None:
    disks.run("qemu-img", "check", "-q", image)
    disks.run("qemu-img", "convert", "-O", "raw", image, raw)


def fsck(kind: str, device: str) -> None:
    if kind == "xfs":
        disks.run("xfs_repair", "-n", device)
    else:
        disks.run("e2fsck", "-fn", device)


def reported(report: dict, number: int) -> dict:
    return next(p for p in report["partitions"] if p["number"] == number)


def check_restored(disk: Disk, raw: Path, report: dict, marker: bytes, work: Path) -> None:
    """Every check on a restored disk but the stale-data search."""
    assert raw.stat().st_size == disk.size
    # Gaps (boot area, both GPTs, EBRs, unpartitioned space) are byte-identical.
    cursor = 0
    for p in sorted(disk.parts, key=lambda p: p.start):
        if p.start > cursor:
            assert disks.same_bytes(disk.path, raw, cursor, p.start - cursor), f"gap before {p.number}"
        cursor = max(cursor, p.start + p.size)
    if disk.table == "gpt":
        # The backup GPT lies after the last partition.
        assert disks.same_bytes(disk.path, raw, disk.size - 33 * 512, 33 * 512)
    for p in disk.parts:
        entry = reported(report, p.number)
        assert (entry["start"], entry["size"]) == (p.start, p.size)
        if p.kind in ("bios", "vfat"):
            assert entry["handling"] == "whole", entry
            assert disks.same_bytes(disk.path, raw, p.start, p.size), f"partition {p.number} differs"
        elif p.kind == "swap":
            assert (entry["content"], entry["handling"], entry["bytes_to_read"]) == ("swap", "header-only", 4096)
            assert disks.same_bytes(disk.path, raw, p.start, 4096)
            assert disks.is_zero(raw, p.start + 4096, p.size - 4096)
            with disks.loop(raw, p.start, p.size, read_only=True) as dev:
                blkid = disks.run("blkid", "-o", "export", dev)
            assert "TYPE=swap" in blkid and "LABEL=swap0" in blkid, blkid
        else:
            assert (entry["content"], entry["handling"]) == (p.kind, "allocated-only"), entry
            assert entry["bytes_to_read"] < p.size // 2, entry
            with disks.loop(raw, p.start, p.size, read_only=True) as restored_dev:
                fsck(p.kind, restored_dev)
                with disks.loop(disk.path, p.start, p.size, read_only=True) as source_dev:
                    with (
                        disks.mounted(source_dev, work / f"src{p.number}", disks.ro_options(p.kind, copy=False)) as a,
                        disks.mounted(restored_dev, work / f"dst{p.number}", disks.ro_options(p.kind, copy=True)) as b,
                    ):
                        source_tree = disks.tree(a)
                        assert len(source_tree) > 400
                        assert disks.tree(b) == source_tree


@pytest.mark.parametrize(
    ("table", "fs"), [("gpt", "ext4"), ("mbr", "xfs"), ("gpt", "xfs"), ("mbr", "ext4")]
)
def test_capture_skips_free_space(cli_binary: Path, marker: bytes, tmp_path: Path, table: str, fs: str) -> None:
    disk = disks.build_disk(tmp_path / "disk.img", table, fs, marker)
    # The test means something only if the source holds stale data in free
    # blocks of the filesystem and in the swap area.
    fs_part = disk.part(fs)
    assert disks.find_marker(disk.path, marker, fs_part.start, fs_part.start + fs_part.size) is not None
    swap = disk.part("swap")
    assert disks.find_marker(disk.path, marker, swap.start, swap.start + swap.size) is not None
    before = disks.sha256(disk.path)

    image = tmp_path / "disk.qcow2"
    report = capture(cli_binary, disk.path, image)
    assert disks.sha256(disk.path) == before, "the source changed"
    assert report["virtual_size"] == disk.size
    # Most of the disk is free: far less is read than its size.
    assert report["bytes_read"] < disk.size // 3, report

    raw = tmp_path / "restored.raw"
    restore(image, raw)
    assert disks.find_marker(raw, marker) is None, "stale deleted data reached the image"
    check_restored(disk, raw, report, marker, tmp_path)


@pytest.fixture(scope="module")
def ext4_disk(tmp_path_factory: pytest.TempPathFactory, marker: bytes) -> Disk:
    """One GPT disk with ext4, copied by each test that spoils it."""
    path = tmp_path_factory.mktemp("ext4") / "disk.img"
    return disks.build_disk(path, "gpt", "ext4", marker)


def spoil_recovery(device: str) -> None:
    disks.run("debugfs", "-w", "-R", "feature needs_recovery", device)


def spoil_bitmap(device: str) -> None:
    out = disks.run("dumpe2fs", device)
    block_size = int(next(l.split(":")[1] for l in out.splitlines() if l.startswith("Block size:")))
    bitmap = int(next(l for l in out.splitlines() if "Block bitmap at " in l).split("Block bitmap at ")[1].split()[0])
    with open(device, "r+b") as f:
        f.seek(bitmap * block_size)
        data = f.read(block_size)
        at = data.rindex(b"\xff")
        f.seek(bitmap * block_size + at)
        f.write(b"\x00")


def spoil_descriptor(device: str) -> None:
    out = disks.run("dumpe2fs", "-h", device)
    block_size = int(next(l.split(":")[1] for l in out.splitlines() if l.startswith("Block size:")))
    with open(device, "r+b") as f:
        # Free-block count of group 0 in the first descriptor.
        f.seek(max(block_size, 2048) + 0xC)
        f.write(b"\x01\x02")


def spoil_superblock(device: str) -> None:
    with open(device, "r+b") as f:
        # Blocks per group: a plausible but wrong value.
        f.seek(1024 + 0x20)
        f.write((16384).to_bytes(4, "little"))


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (spoil_recovery, "journal needs recovery"),
        (spoil_bitmap, "block bitmap of group 0"),
        (spoil_descriptor, "group descriptor 0"),
        (spoil_superblock, "superblock"),
    ],
)
def test_untrustworthy_ext4_is_copied_whole(
    cli_binary: Path, marker: bytes, ext4_disk: Disk, tmp_path: Path, spoil, reason: str
) -> None:
    path = tmp_path / "disk.img"
    shutil.copyfile(ext4_disk.path, path)
    part = ext4_disk.part("ext4")
    with disks.loop(path, part.start, part.size) as dev:
        spoil(dev)
    disk = Disk(path, ext4_disk.size, "gpt", ext4_disk.parts)
    before = disks.sha256(path)
    image = tmp_path / "disk.qcow2"
    report = capture(cli_binary, path, image)
    assert disks.sha256(path) == before
    entry = reported(report, part.number)
    assert entry["handling"] == "whole", entry
    assert reason in entry.get("reason", ""), entry
    raw = tmp_path / "restored.raw"
    restore(image, raw)
    # Whole means byte for byte, stale data included; other partitions are still planned.
    assert disks.same_bytes(path, raw, part.start, part.size)
    assert reported(report, disk.part("swap").number)["handling"] == "header-only"
    assert disks.find_marker(raw, marker, part.start, part.start + part.size) is not None


def test_no_skip_free_space_reads_everything(cli_binary: Path, ext4_disk: Disk, tmp_path: Path) -> None:
    image = tmp_path / "disk.qcow2"
    capture(cli_binary, ext4_disk.path, image, "--no-skip-free-space")
    disks.run("qemu-img", "check", "-q", image)
    disks.run("qemu-img", "compare", "-q", ext4_disk.path, image)


def test_ext4_bitmap_that_lies_consistently_is_copied_whole(
    cli_binary: Path, marker: bytes, ext4_disk: Disk, tmp_path: Path
) -> None:
    """A file's blocks marked free and as many free blocks marked used:
    checksums and counts all valid, only the inodes tell. Trusting the bitmap
    would drop the file's data from the image."""
    path = tmp_path / "disk.img"
    shutil.copyfile(ext4_disk.path, path)
    part = ext4_disk.part("ext4")
    victim = "/var/lib/data/blob6"  # 1 MiB of random bytes
    with disks.loop(path, part.start, part.size) as dev:
        with disks.mounted(dev, tmp_path / "before", disks.ro_options("ext4", copy=False)) as mnt:
            content = (mnt / victim.lstrip("/")).read_bytes()
        blocks = disks.ext_lie_about(dev, victim)
        # The lie is real: e2fsck sees it, and debugfs reports the blocks free.
        fsck = subprocess.run(["e2fsck", "-fn", dev], capture_output=True, text=True, check=False)
        assert fsck.returncode == 4 and "Block bitmap differences" in fsck.stdout, fsck.stdout
        assert "marked in use" not in disks.run("debugfs", "-R", f"testb {blocks[0]} 1", dev)
    before = disks.sha256(path)
    image = tmp_path / "disk.qcow2"
    report = capture(cli_binary, path, image)
    assert disks.sha256(path) == before
    entry = reported(report, part.number)
    assert entry["handling"] == "whole", entry
    assert "block bitmaps mark" in entry["reason"] and "inode" in entry["reason"], entry
    raw = tmp_path / "restored.raw"
    restore(image, raw)
    assert disks.same_bytes(path, raw, part.start, part.size)
    with disks.loop(raw, part.start, part.size, read_only=True) as dev:
        with disks.mounted(dev, tmp_path / "after", disks.ro_options("ext4", copy=True)) as mnt:
            assert (mnt / victim.lstrip("/")).read_bytes() == content
    # The other partitions are still planned.
    assert reported(report, ext4_disk.part("swap").number)["handling"] == "header-only"


@pytest.mark.parametrize(
    ("rmapbt", "reason"),
    [
        (False, "by-block and by-size free-space btrees of AG"),
        (True, "the reverse-mapping btree says it is in use"),
    ],
)
def test_xfs_free_space_that_lies_is_copied_whole(
    cli_binary: Path, marker: bytes, tmp_path: Path, rmapbt: bool, reason: str
) -> None:
    """A free extent moved over a file's blocks, lengths and CRCs valid: in
    the by-block btree only (the by-size btree disagrees) or in both (only
    the reverse-mapping btree tells)."""
    disk = disks.build_disk(tmp_path / "disk.img", "mbr", "xfs", marker, rmapbt=rmapbt)
    part = disk.part("xfs")
    with disks.loop(disk.path, part.start, part.size) as dev:
        with disks.mounted(dev, tmp_path / "rw", "rw") as mnt:
            victim = mnt / "victim.bin"
            content = disks.pattern(b"VICTIM", MIB)
            victim.write_bytes(content)
            os.sync()
            # One extent: "0: [0..2047]: 512..2559 0 (512..2559) 2048" (sectors).
            line = disks.run("xfs_bmap", "-v", victim).splitlines()[2].split()
            ag, (lo, hi) = int(line[3]), line[4].strip("()").split("..")
        block = 8  # 4096-byte blocks of 512-byte sectors
        start, end = int(lo) // block, (int(hi) + 1) // block
        disks.xfs_lie_about(dev, ag, start, end, by_size=rmapbt)
        repair = subprocess.run(["xfs_repair", "-n", dev], capture_output=True, text=True, check=False)
        assert repair.returncode == 1, repair.stdout + repair.stderr
    before = disks.sha256(disk.path)
    image = tmp_path / "disk.qcow2"
    report = capture(cli_binary, disk.path, image)
    assert disks.sha256(disk.path) == before
    entry = reported(report, part.number)
    assert entry["handling"] == "whole", entry
    assert reason in entry["reason"], entry
    raw = tmp_path / "restored.raw"
    restore(image, raw)
    assert disks.same_bytes(disk.path, raw, part.start, part.size)
    with disks.loop(raw, part.start, part.size, read_only=True) as dev:
        with disks.mounted(dev, tmp_path / "after", disks.ro_options("xfs", copy=False)) as mnt:
            assert (mnt / "victim.bin").read_bytes() == content
