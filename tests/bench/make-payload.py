#!/usr/bin/env python3
"""Generate the benchmark disk's data: deterministic, mixed, about 1.5 GiB.

Writes three folders under OUT (created fresh; OUT must not exist):

``root/``
    about 1 GiB copied into the ext4 root on top of the Debian tree: logs and
    CSV (compress well), database-like pages (structured, partly zero),
    incompressible random data, and copies of this machine's shared libraries
    (real machine code, compresses about 2-3x).
``esp/``
    about 40 MiB for the EFI system partition: loader-like binaries.
``junk/``
    about 512 MiB written into the root file system and then deleted, so its
    free blocks carry stale data the way a used disk's do.

Everything except the library copies comes from a seeded generator, so two
builds hold the same bytes; the library copies are sorted by name, so they are
stable on one machine. Sizes are in MiB and can be scaled with ``--scale``
(a small scale makes a quick smoke disk).
"""

import argparse
import os
import random
import struct
import sys
from pathlib import Path

MIB = 1 << 20

# Words for log lines: a fixed vocabulary makes text that compresses about
# as well as real syslogs (5-10x with zstd).
HOSTS = ["node-%02d" % i for i in range(12)]
UNITS = ["kernel", "systemd", "sshd", "cron", "dockerd", "slurmd", "nfsd", "chronyd"]
MESSAGES = [
    "Started Session {n} of user researcher.",
    "Accepted publickey for cc from 10.{a}.{b}.{c} port {p} ssh2",
    "eth0: link up, 25000 Mbps, full duplex",
    "job {n} finished with status 0 after {p} s",
    "Out of memory: Killed process {n} (python3) total-vm:{p}kB",
    "EXT4-fs (sda3): re-mounted. Quota mode: none.",
    "pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)",
    "NFS: server 10.{a}.{b}.{c} OK",
    "rcu: INFO: rcu_sched self-detected stall on CPU {a}",
    "Received signal 15; terminating.",
]


def write_file(path: Path, chunks) -> int:
    """Write an iterable of byte chunks to path; return the bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            total += len(chunk)
    return total


def log_chunks(rng: random.Random, size: int):
    """Syslog-like text lines until size bytes."""
    written = 0
    t = 1_700_000_000
    while written < size:
        lines = []
        # About 80 bytes a line: don't generate far more than needed.
        for _ in range(min(2000, (size - written) // 60 + 1)):
            t += rng.randrange(0, 3)
            msg = rng.choice(MESSAGES).format(
                n=rng.randrange(100000),
                a=rng.randrange(256),
                b=rng.randrange(256),
                c=rng.randrange(256),
                p=rng.randrange(65536),
            )
            lines.append(
                "%d %s %s[%d]: %s\n"
                % (t, rng.choice(HOSTS), rng.choice(UNITS), rng.randrange(1, 99999), msg)
            )
        chunk = "".join(lines).encode()[: size - written]
        written += len(chunk)
        yield chunk


def csv_chunks(rng: random.Random, size: int):
    """A numeric table with repeated structure (experiment results)."""
    written = 0
    row = 0
    header = b"run,step,temperature,pressure,energy,status\n"
    yield header
    written += len(header)
    while written < size:
        rows = []
        for _ in range(4000):
            row += 1
            rows.append(
                "%d,%d,%.3f,%.5f,%.8e,%s\n"
                % (
                    row // 1000,
                    row % 1000,
                    20 + rng.random() * 5,
                    1 + rng.random() / 100,
                    rng.random() * 1e6,
                    "ok" if rng.random() < 0.99 else "retry",
                )
            )
        chunk = "".join(rows).encode()[: size - written]
        written += len(chunk)
        yield chunk


def page_chunks(rng: random.Random, size: int):
    """8 KiB database-like pages: header, packed records, zero tail."""
    page_size = 8192
    record = struct.Struct("<QIId16s")
    for page_no in range(size // page_size):
        fill = rng.randrange(record.size, page_size - 24)
        body = bytearray()
        while len(body) + record.size <= fill:
            body += record.pack(
                rng.randrange(1 << 40),
                page_no,
                rng.randrange(1000),
                rng.random(),
                b"sensor-%09d" % rng.randrange(10**9),
            )
        header = struct.pack("<IIQII", 0xDB0A7A6E, page_no, rng.randrange(1 << 32), len(body), 0)
        yield (header + bytes(body)).ljust(page_size, b"\0")


def random_chunks(rng: random.Random, size: int):
    """Incompressible bytes (encrypted or already compressed data)."""
    left = size
    while left:
        n = min(left, 4 * MIB)
        left -= n
        yield rng.randbytes(n)


def copy_libraries(dest: Path, budget: int) -> int:
    """Copy regular files of this machine's library folders, sorted, to budget bytes."""
    copied = 0
    for top in ("/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr/bin"):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                src = Path(dirpath) / name
                if src.is_symlink() or not src.is_file():
                    continue
                size = src.stat().st_size
                if size < 4096 or copied + size > budget:
                    continue
                target = dest / src.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(src.read_bytes())
                copied += size
                if copied > budget - 4096:
                    return copied
    return copied


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create (must not exist)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    args = parser.parse_args()

    def mib(n: float) -> int:
        return max(8192, int(n * args.scale * MIB) // 8192 * 8192)

    out: Path = args.out
    out.mkdir(parents=True)
    rng = random.Random(20261124)
    root = out / "root"
    sizes = {}

    def put(rel: str, chunks):
        sizes[rel] = write_file(root / rel, chunks)

    for i in range(5):
        put("var/log/cluster/syslog.%d" % i, log_chunks(rng, mib(50)))
    put("var/log/journal/system.journal~", page_chunks(rng, mib(20)))
    put("home/researcher/experiment/results.csv", csv_chunks(rng, mib(130)))
    put("var/lib/postgresql/15/main/base/16384/24576", page_chunks(rng, mib(100)))
    put("home/researcher/experiment/raw/capture-0.bin.zst", random_chunks(rng, mib(120)))
    put("home/researcher/dataset/images.tar.xz", random_chunks(rng, mib(80)))
    # Many small files too: a source tree's worth of small text files.
    for i in range(2000):
        put("home/researcher/src/module%04d.py" % i, log_chunks(rng, 2048 + rng.randrange(16384)))
    sizes["opt/libcopy"] = copy_libraries(root / "opt/libcopy", mib(300))

    esp = out / "esp"
    write_file(esp / "EFI/BOOT/BOOTX64.EFI", [Path("/usr/lib/x86_64-linux-gnu/libc.so.6").read_bytes()])
    write_file(esp / "EFI/debian/grubx64.efi", random_chunks(rng, mib(2)))
    write_file(esp / "vmlinuz", random_chunks(rng, mib(10)))
    write_file(esp / "initrd.img", random_chunks(rng, mib(20)) if args.scale >= 1 else [b"initrd\n"])
    write_file(esp / "EFI/debian/grub.cfg", [b"set timeout=5\nmenuentry 'Debian' { linux /vmlinuz }\n"])

    junk = out / "junk"
    write_file(junk / "old-run.bin", random_chunks(rng, mib(256)))
    write_file(junk / "old-run.log", log_chunks(rng, mib(256)))

    total = sum(sizes.values())
    print("payload: root %.0f MiB in %d files, esp and junk in %s" % (total / MIB, len(sizes), out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
