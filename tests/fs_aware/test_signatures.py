"""Content signatures the free-space planner must not take on trust.

A ``SWAPSPACE2`` left in an ext4 (the last 10 bytes of its first page lie
in block 0, which ext4 never writes past the superblock) once made the
partition "swap", planned header-only: the ext4's data was dropped. Swap
now needs the header mkswap writes, and every signature is probed: two at
once are ambiguous and read whole, as blkid calls them ambivalent.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from . import disks
from .disks import MIB
from .test_fs_aware import reported, restore

GIB = 1 << 30


def sparse_sha256(path: Path) -> str:
    """sha256 of a sparse file's content without reading its holes: every
    non-zero 64 KiB block found by SEEK_DATA, with its offset. (Zero blocks
    are left out: reading an unwritten extent turns it into "data" for
    SEEK_DATA, with the same zeros.)"""
    h = hashlib.sha256()
    block = 64 << 10
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        pos = 0
        while pos < end:
            try:
                data_at = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            stop = os.lseek(f.fileno(), data_at, os.SEEK_HOLE)
            pos = max(pos, data_at // block * block)
            f.seek(pos)
            while pos < stop:
                data = f.read(block)
                if data.strip(b"\0"):
                    h.update(pos.to_bytes(8, "little") + data)
                pos += len(data)
    return h.hexdigest()


def stray_swap_signature(path: Path, part: disks.Part) -> None:
    with open(path, "r+b") as f:
        f.seek(part.start + 4086)
        f.write(b"SWAPSPACE2")


def blkid_probe(path: Path, part: disks.Part) -> tuple[int, str]:
    """Exit code and output of ``blkid -p`` on a partition (8: ambivalent)."""
    with disks.loop(path, part.start, part.size, read_only=True) as dev:
        proc = subprocess.run(["blkid", "-p", "-o", "export", dev], capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_stray_swap_signature_never_makes_a_filesystem_swap(
    cli_binary: Path, marker: bytes, tmp_path: Path
) -> None:
    # p1: a 16 GiB ext4 with 16 Mi inodes (as -T news makes on 64 GiB): its
    # superblock reads as a big-endian swap header of version 1 behind the
    # stray signature. p2: an ordinary ext4 with the same stray signature.
    # p3: a real swap area holding stale "memory". The disk is sparse.
    size = 16 * GIB + 132 * MIB
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(size)
    disks.run("sgdisk", "-o", "-n1:2048:+16G", "-n2:0:+96M", "-n3:0:+32M", "-t3:8200", path)
    kinds = {1: "ext4", 2: "ext4", 3: "swap"}
    parts = [disks.Part(n, start, sz, kinds[n]) for n, start, sz in disks.table_parts(path)]
    p1, p2, swap = parts
    with open(path, "r+b") as f:
        f.seek(swap.start)
        f.write(disks.pattern(marker, swap.size))
    trees = {}
    for p, mkfs in [(p1, ["-m", "0", "-N", "16777216", "-E", "nodiscard,lazy_itable_init=1"]),
                    (p2, ["-b", "4096", "-E", "nodiscard"])]:
        with disks.loop(path, p.start, p.size) as dev:
            disks.run("mkfs.ext4", "-q", "-F", *mkfs, dev)
            # noinit_itable: no background zeroing of 4 GiB of inode tables.
            with disks.mounted(dev, tmp_path / f"mnt{p.number}", "rw,noinit_itable") as mnt:
                disks.populate(mnt, seed=p.number)
                disks.write_stale(mnt, marker, 4 * MIB)
                trees[p.number] = disks.tree(mnt)
        stray_swap_signature(path, p)
        # Still a valid ext4: with 4 KiB blocks the signature lies in the
        # unused end of block 0.
        with disks.loop(path, p.start, p.size, read_only=True) as dev:
            disks.run("e2fsck", "-fn", dev)
    with disks.loop(path, swap.start, swap.size) as dev:
        disks.run("mkswap", "-L", "swap0", dev)
    # blkid's view, which the planner follows: p1 ambivalent, p2 ext4, p3 swap.
    assert blkid_probe(path, p1)[0] == 8, blkid_probe(path, p1)
    assert "TYPE=ext4" in blkid_probe(path, p2)[1]
    assert "TYPE=swap" in blkid_probe(path, swap)[1]
    before = sparse_sha256(path)

    # The image file is captured directly: holes of a sparse file are not read.
    image = tmp_path / "disk.qcow2"
    proc = subprocess.run([cli_binary, "capture", path, "-o", image, "--json"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert sparse_sha256(path) == before, "the source changed"
    raw = tmp_path / "restored.raw"
    restore(image, raw)
    # Both filesystems come back whole and sound.
    for p in (p1, p2):
        with disks.loop(raw, p.start, p.size, read_only=True) as dev:
            disks.run("e2fsck", "-fn", dev)
            # -t: mount, like blkid, refuses to guess between two signatures.
            with disks.mounted(dev, tmp_path / f"restored{p.number}", "ro,noload", fstype="ext4") as mnt:
                assert disks.tree(mnt) == trees[p.number]
    # The real swap area still keeps only its header page.
    assert disks.same_bytes(path, raw, swap.start, 4096)
    assert disks.is_zero(raw, swap.start + 4096, swap.size - 4096)

    first, second, third = (reported(report, p.number) for p in parts)
    assert (first["content"], first["handling"]) == ("ambiguous", "whole"), first
    assert "swap and ext4" in first["reason"], first
    assert (second["content"], second["handling"]) == ("ext4", "allocated-only"), second
    assert (third["content"], third["handling"], third["bytes_to_read"]) == ("swap", "header-only", 4096), third
