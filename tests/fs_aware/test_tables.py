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
import subprocess
from pathlib import Path

from . import disks
from .disks import MIB
from .test_fs_aware import capture, restore


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
    before = disks.sha256(path)

    image = tmp_path / "disk.qcow2"
    report = capture(cli_binary, path, image)
    assert disks.sha256(path) == before, "the source changed"
    raw = tmp_path / "restored.raw"
    restore(image, raw)
    # The restored XFS is whole and sound (reading the stale GPT skipped its data).
    with disks.loop(raw, start, part_size, read_only=True) as dev:
        disks.run("xfs_repair", "-n", dev)
        with disks.mounted(dev, tmp_path / "restored", disks.ro_options("xfs", copy=False)) as mnt:
            assert disks.tree(mnt) == source_tree
    disks.run("qemu-img", "compare", "-q", path, image)
    # One entry for the whole disk, saying why.
    [entry] = report["partitions"]
    assert (entry["number"], entry["handling"], entry["size"]) == (0, "whole", size), entry
    assert "conflicting partition tables" in entry["reason"] and "GPT" in entry["reason"], entry
    assert report["bytes_read"] >= size - 2 * MIB, report
