"""Partition tables the free-space planner must not misread.

- A stale GPT left behind an MBR (the first MiB zeroed, then ``sfdisk``
  writes an MBR: the backup GPT at the disk end survives). Neither the kernel
  nor blkid uses a GPT without a protective MBR; the planner must not either,
  and as it cannot tell which table the disk's owner meant, it copies the
  disk whole and says why.
- Extended boot records lying inside another partition's free space: every
  partition-table sector is copied as is, or the restored disk loses its
  logical partitions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from . import disks
from .disks import MIB
from .test_fs_aware import capture, check_restored, restore


def capture_and_restore(cli: Path, path: Path, work: Path) -> tuple[dict, Path]:
    """Captures ``path`` (checking that the source stays unchanged), restores
    the image to a raw file; returns the report and that file."""
    before = disks.sha256(path)
    image = work / "disk.qcow2"
    report = capture(cli, path, image)
    assert disks.sha256(path) == before, "the source changed"
    raw = work / "restored.raw"
    restore(image, raw)
    return report, raw


def fill_xfs(root: Path, seed: int, total: int) -> None:
    """Writes ``total`` bytes of random files into four directories, which
    XFS spreads over its allocation groups."""
    rng = random.Random(seed)
    size = 2 * MIB
    for i in range(total // size):
        folder = root / f"d{i % 4}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i:03d}").write_bytes(rng.randbytes(size))


def test_stale_backup_gpt_behind_an_mbr_is_a_conflict(cli_binary: Path, tmp_path: Path) -> None:
    size = 512 * MIB
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(size)
    # The old life of the disk: a GPT with an ext4 at 80 MiB holding files,
    # its metadata all at its start (4 KiB blocks: two groups, one flex group).
    disks.run("sgdisk", "-o", "-n1:80M:+256M", "-t1:8300", path)
    old_start, old_size = 80 * MIB, 256 * MIB
    with disks.loop(path, old_start, old_size) as dev:
        disks.run("mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-b", "4096", dev)
        with disks.mounted(dev, tmp_path / "old", "rw") as mnt:
            disks.populate(mnt, seed=3)
    # The new one: first MiB zeroed, an MBR with one partition short of the
    # disk end (where the backup GPT stays), XFS holding live data.
    with open(path, "r+b") as f:
        f.write(bytes(MIB))
    disks.run("sfdisk", "-q", path, input="label: dos\n,400M,83\n")
    [(number, start, part_size)] = disks.table_parts(path)
    with disks.loop(path, start, part_size) as dev:
        disks.mkfs("xfs", dev)
        with disks.mounted(dev, tmp_path / "new", "rw") as mnt:
            fill_xfs(mnt, seed=5, total=180 * MIB)
            source_tree = disks.tree(mnt)
    # The scenario holds: the backup GPT and the stale ext4 superblock survived.
    with open(path, "rb") as f:
        f.seek(size - 512)
        assert f.read(8) == b"EFI PART", "sfdisk or mkfs wiped the backup GPT"
    with disks.loop(path, old_start, old_size, read_only=True) as dev:
        assert disks.run("blkid", "-p", "-o", "value", "-s", "TYPE", dev).strip() == "ext4"
    report, raw = capture_and_restore(cli_binary, path, tmp_path)
    # The restored XFS is whole and sound (reading the stale GPT skipped its data).
    with disks.loop(raw, start, part_size, read_only=True) as dev:
        disks.run("xfs_repair", "-n", dev)
        with disks.mounted(dev, tmp_path / "restored", disks.ro_options("xfs", copy=False)) as mnt:
            assert disks.tree(mnt) == source_tree
    disks.run("qemu-img", "compare", "-q", path, tmp_path / "disk.qcow2")
    # One entry for the whole disk, saying why.
    [entry] = report["partitions"]
    assert (entry["number"], entry["handling"], entry["size"]) == (0, "whole", size), entry
    assert "conflicting partition tables" in entry["reason"] and "GPT" in entry["reason"], entry
    assert report["bytes_read"] >= size - 2 * MIB, report


def boot_record(path: Path, lba: int, slots: list[tuple[int, int, int]]) -> None:
    """Writes an MBR or EBR at ``lba``: up to four (type, first LBA, sectors)
    slots (an EBR's first LBAs are relative, as the format wants) and the
    signature. Only the slots and the signature are touched."""
    with open(path, "r+b") as f:
        f.seek(lba * 512 + 0x1BE)
        entries = b"".join(
            bytes(4) + bytes([kind]) + bytes(3) + first.to_bytes(4, "little") + count.to_bytes(4, "little")
            for kind, first, count in slots
        )
        f.write(entries.ljust(64, b"\0") + b"\x55\xaa")


def block_in_use(device: str, block: int) -> bool:
    out = disks.run("debugfs", "-R", f"testb {block}", device)
    return "marked in use" in out


def test_extended_boot_records_inside_free_space_are_kept(cli_binary: Path, marker: bytes, tmp_path: Path) -> None:
    # LBAs (512 bytes): a primary ext4, an extended partition whose first EBR
    # is the last 4 KiB of that ext4, two logical partitions, the second's
    # EBR the last 4 KiB of the first logical. Kernel and sfdisk accept it;
    # both EBRs lie in blocks the filesystems hold free.
    size = 192 * MIB
    p1 = (2048, 131072)
    ebr1 = p1[0] + p1[1] - 8
    l5 = (135168, 131072)
    ebr2 = l5[0] + l5[1] - 8
    l6 = (268288, 98304)
    extended = (ebr1, size // 512 - ebr1)
    parts = [disks.Part(1, p1[0] * 512, p1[1] * 512, "ext4"), disks.Part(5, l5[0] * 512, l5[1] * 512, "ext4"),
             disks.Part(6, l6[0] * 512, l6[1] * 512, "ext2")]
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(size)
    for p in parts:
        with disks.loop(path, p.start, p.size) as dev:
            disks.mkfs(p.kind, dev)
            with disks.mounted(dev, tmp_path / f"mnt{p.number}", "rw") as mnt:
                disks.populate(mnt, seed=p.number)
                disks.write_stale(mnt, marker, 4 * MIB)
    # The tables last: mkfs wipes the end of its device, where two of them lie.
    boot_record(path, 0, [(0x83, *p1), (0x05, *extended)])
    boot_record(path, ebr1, [(0x83, l5[0] - ebr1, l5[1]), (0x05, ebr2 - ebr1, size // 512 - ebr2)])
    boot_record(path, ebr2, [(0x83, l6[0] - ebr2, l6[1])])
    table = json.loads(disks.run("sfdisk", "-J", path))["partitiontable"]
    assert [(p["start"], p["size"]) for p in table["partitions"]] == [p1, extended, l5, l6], table
    # The EBRs lie in blocks free in the filesystems around them.
    for ebr, (start, count), block_size in [(ebr1, p1, 1024), (ebr2, l5, 1024)]:
        with disks.loop(path, start * 512, count * 512, read_only=True) as dev:
            assert disks.run("dumpe2fs", "-h", dev).count(f"Block size:               {block_size}") == 1
            assert not block_in_use(dev, (ebr - start) * 512 // block_size)
    report, raw = capture_and_restore(cli_binary, path, tmp_path)
    # The restored disk has the same partitions, its tables the same bytes.
    assert json.loads(disks.run("sfdisk", "-J", raw))["partitiontable"]["partitions"] == [
        {**p, "node": str(raw) + p["node"][len(str(path)):]} for p in table["partitions"]
    ]
    for lba in (0, ebr1, ebr2):
        assert disks.same_bytes(path, raw, lba * 512, 512), f"boot record at LBA {lba} differs"
    # The filesystems around the EBRs were still planned by their free space.
    disk = disks.Disk(path, size, "mbr", parts)
    check_restored(disk, raw, report, marker, tmp_path)
    assert disks.find_marker(raw, marker) is None, "stale deleted data reached the image"
