#!/usr/bin/env python3
"""Benchmark ``ironic-snapshot capture`` against ``qemu-img convert -c``.

Attaches each benchmark disk read-only to a loop device, reads it once into
the page cache, then runs the contenders alternately N times, measuring wall
time, CPU time and peak RSS (GNU ``/usr/bin/time -v``) and the output size.
The first image of every contender is validated; then a table, the ratios and
one ``TARGET MISSED`` line per missed target are printed. The exit status is
non-zero only when a run or a validation failed: missing a target is a
finding, not a failure. Needs root (loop devices, read-only mounts).

Contenders on the 8 GiB disk:

``ours``          ``ironic-snapshot capture DEV -o OUT --force --json`` (defaults:
                  zstd, free-space skipping on)
``ours-noskip``   the same with ``--no-skip-free-space`` (when the CLI has the flag)
``qemu``          ``qemu-img convert -W -m 16 -c -O qcow2 -o compression_type=zstd DEV OUT``

On the 64 GiB disk (same data, bigger ext4) ``ours`` runs again for the
scaling ratio; ``--qemu-64`` adds qemu-img there too (it reads all 64 GiB).

With ``--stream LIMIT`` (repeatable), the streaming path runs too:
``stream-LIMIT`` is ``ironic-snapshot capture DEV -o - --memory-limit LIMIT
--report FILE`` with standard output going to a file, the path of an upload to
Glance (the qcow2 header first: compressed data spooled within the limit, or
the disk read twice). Its peak RSS must stay within the limit plus
``STREAM_SLACK_MIB``. ``--disk2t`` adds the same data on a 2 TiB sparse disk,
where only the streams run; ``--stream-only`` runs only the streams.

With ``--planner`` (the ``plan`` example of snapshot-core), what planning
costs on each disk is measured first, with and without the cross-check of
allocation bitmaps against the inodes: median seconds and the metadata bytes
and reads the planner makes. ``--plan-only`` stops there.
"""

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MIB = 1 << 20

# Targets of the project (issue): name -> (description, comparison, bound).
TARGET_TIME_NOSKIP = 5.0
TARGET_TIME_SKIP = 15.0
TARGET_SIZE_NOSKIP = 1.0
TARGET_SIZE_SKIP = 0.8
TARGET_RSS_MIB = 256.0
TARGET_SCALING = 1.2
# A stream's peak RSS may pass its --memory-limit by this much (the binary,
# thread stacks, allocator slack): issue 10, item 11.
STREAM_SLACK_MIB = 64.0


def _on_signal(signum, frame):
    # SystemExit unwinds every ExitStack: mounts and loop devices are undone.
    sys.exit(128 + signum)


def run(cmd, **kw):
    """Run a command, raising with its stderr when it fails."""
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError(
            "%s exited %d: %s" % (" ".join(map(str, cmd)), res.returncode, res.stderr.strip()[-2000:])
        )
    return res.stdout


def attach(stack, path, offset=None, size=None):
    """Attach path read-only to a fresh loop device, detached when stack closes."""
    cmd = ["losetup", "-r", "-f", "--show"]
    if offset is not None:
        cmd += ["-o", str(offset), "--sizelimit", str(size)]
    dev = run(cmd + [str(path)]).strip()
    stack.callback(subprocess.run, ["losetup", "-d", dev], check=False)
    if run(["blockdev", "--getro", dev]).strip() != "1":
        raise RuntimeError("%s is not read-only" % dev)
    return dev


def mount_ro(stack, dev, where):
    """Mount an ext4 device read-only without journal replay, unmounted when stack closes."""
    where.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "ext4", "-o", "ro,noload", dev, str(where)])
    stack.callback(subprocess.run, ["umount", str(where)], check=False)


def partitions(path):
    """(number, type GUID, byte offset, byte size) of each partition of a disk image."""
    table = json.loads(run(["sfdisk", "-J", str(path)]))["partitiontable"]
    ss = table.get("sectorsize", 512)
    return [
        (i + 1, p["type"].upper(), p["start"] * ss, p["size"] * ss)
        for i, p in enumerate(table["partitions"])
    ]


EXT4_TYPES = {"0FC63DAF-8483-4772-8E79-3D69D8477DE4", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"}
SWAP_TYPE = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"


def warm(dev):
    """Read a device once so the runs read from the page cache; return MB/s."""
    start = time.monotonic()
    total = 0
    with open(dev, "rb", buffering=0) as f:
        while True:
            n = len(f.read(16 * MIB))
            if not n:
                break
            total += n
    secs = time.monotonic() - start
    return total / secs / 1e6 if secs else 0.0


def parse_size_mib(text):
    """MiB of a size such as 256M or 1G (K, M, G, T binary suffixes)."""
    m = re.fullmatch(r"(\d+)([KMGT]?)", text.strip().upper())
    if not m:
        raise ValueError("not a size: %s (use such as 256M or 1G)" % text)
    return int(m.group(1)) * {"": 1 / MIB, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1 << 20}[m.group(2)]


def timed(cmd, out_path, log_path, report_path=None):
    """Run cmd under GNU time -v; return a result dict (raises if it fails).

    ``report_path``: where the command writes its JSON report (``--report``),
    when its standard output is the image.
    """
    time_file = str(log_path) + ".time"
    # Other work on the machine skews wall times: record the load it saw.
    load = os.getloadavg()[0]
    with open(log_path, "w") as log:
        start = time.monotonic()
        res = subprocess.run(
            ["/usr/bin/time", "-v", "-o", time_file] + cmd, stdout=subprocess.PIPE, stderr=log, text=True
        )
        wall = time.monotonic() - start
    if res.returncode != 0:
        raise RuntimeError(
            "%s exited %d, log: %s\n%s"
            % (" ".join(cmd), res.returncode, log_path, Path(log_path).read_text()[-2000:])
        )
    tv = Path(time_file).read_text()

    def field(name):
        m = re.search(re.escape(name) + r"\s*:\s*([0-9.]+)", tv)
        return float(m.group(1)) if m else float("nan")

    result = {
        "wall_s": wall,
        "user_s": field("User time (seconds)"),
        "sys_s": field("System time (seconds)"),
        "rss_mib": field("Maximum resident set size (kbytes)") / 1024,
        "size": os.stat(out_path).st_size,
        "load_before": load,
    }
    if report_path is not None:
        result["report"] = json.loads(Path(report_path).read_text())
    elif res.stdout.strip():
        try:
            result["report"] = json.loads(res.stdout)
        except ValueError:
            result["stdout"] = res.stdout[-500:]
    return result


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def digest_floor(image):
    """Seconds it takes to hash ``image`` with the three digests the report
    carries (md5, sha512, sha256), each on its own thread, from the page
    cache, with Python's hashlib (OpenSSL: about the fastest single-stream
    implementations there are; it uses the CPU's SHA extensions).

    A tool that reports these digests of a compressed qcow2 it lays out in
    one pass spends about this long after its last cluster is compressed:
    the header, first in the file, depends on the size of everything after
    it, so hashing in file order can only start once compression is done,
    and MD5 and SHA are sequential. qemu-img's time divided by this is an
    upper bound of the time ratio on this machine (compression for free).
    """
    with open(image, "rb") as f:  # into the page cache, as ours reads it back
        while f.read(1 << 24):
            pass

    def digest(name):
        with open(image, "rb") as f:
            hashlib.file_digest(f, name)  # releases the GIL while hashing

    start = time.monotonic()
    threads = [threading.Thread(target=digest, args=(name,)) for name in ("md5", "sha512", "sha256")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - start


def qemu_check(image):
    run(["qemu-img", "check", "-q", str(image)])


def validate_identical(image, dev):
    """The image must hold exactly the device's bytes."""
    qemu_check(image)
    run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", str(image), dev])
    return "qemu-img check ok, qemu-img compare identical"


def same_range(a, b, offset, size):
    """Whether two files/devices hold the same bytes in [offset, offset+size)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(offset)
        fb.seek(offset)
        left = size
        while left:
            n = min(left, 16 * MIB)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


def validate_skipping(image, disk, dev, work):
    """Check an image captured with free-space skipping.

    Its free ext4 blocks and unused swap read as zeros, so qemu-img compare
    must differ; instead: qemu-img check, identical partition table, ESP and
    swap header, e2fsck -fn clean on the root, and the root's files, links,
    owners and modes identical to the source's (diff of read-only mounts).
    """
    qemu_check(image)
    raw = work / "skip-validate.raw"
    with contextlib.ExitStack() as stack:
        stack.callback(raw.unlink, missing_ok=True)
        run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)])
        return _validate_raw(stack, raw, disk, dev, work)


def _validate_raw(stack, raw, disk, dev, work):
    parts = partitions(disk)
    size = os.stat(disk).st_size
    first = min(p[2] for p in parts)
    notes = []
    if not same_range(raw, dev, 0, first) or not same_range(raw, dev, size - 34 * 512, 34 * 512):
        raise RuntimeError("Partition table differs between image and source")
    notes.append("GPT identical")
    for num, ptype, off, psize in parts:
        if ptype in EXT4_TYPES:
            img_dev = attach(stack, raw, off, psize)
            src_dev = attach(stack, disk, off, psize)
            fsck = subprocess.run(["e2fsck", "-fn", img_dev], capture_output=True, text=True)
            if fsck.returncode != 0:
                raise RuntimeError("e2fsck -fn on image partition %d: %s" % (num, fsck.stdout[-2000:]))
            a, b = work / ("src%d" % num), work / ("img%d" % num)
            mount_ro(stack, src_dev, a)
            mount_ro(stack, img_dev, b)
            # diff -r compares contents of regular files and symlink targets;
            # the rsync-like listing below catches owner/mode/size differences.
            diff = subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)],
                                  capture_output=True, text=True)
            if diff.returncode != 0:
                raise RuntimeError("Files differ on partition %d: %s" % (num, diff.stdout[-2000:]))
            meta = []
            for top in (a, b):
                listing = run(["find", ".", "-printf", "%p %U:%G %m %y %s %l\n"], cwd=str(top))
                meta.append(sorted(listing.splitlines()))
            if meta[0] != meta[1]:
                raise RuntimeError("Owners, modes or sizes differ on partition %d" % num)
            notes.append("p%d ext4: e2fsck -fn clean, %d entries identical (diff -r + owners/modes)"
                         % (num, len(meta[0])))
        elif ptype == SWAP_TYPE:
            if not same_range(raw, dev, off, 4096):
                raise RuntimeError("Swap header of partition %d differs" % num)
            notes.append("p%d swap: header identical" % num)
        else:
            if not same_range(raw, dev, off, psize):
                raise RuntimeError("Partition %d (%s) differs" % (num, ptype))
            notes.append("p%d identical" % num)
    return "qemu-img check ok, " + ", ".join(notes)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cli", required=True, help="path of the ironic-snapshot binary")
    parser.add_argument("--disk8", required=True, type=Path, help="the 8 GiB benchmark disk image")
    parser.add_argument("--disk64", type=Path, help="the 64 GiB variant (scaling check)")
    parser.add_argument("--disk2t", type=Path, help="the 2 TiB sparse variant (streams only)")
    parser.add_argument("--stream", action="append", default=[], metavar="LIMIT",
                        help="also run the streaming path (-o -) with this --memory-limit (repeatable)")
    parser.add_argument("--stream-only", action="store_true", help="run only the streams")
    parser.add_argument("--runs", type=int, default=3, help="runs per contender (default 3)")
    parser.add_argument("--out-dir", type=Path, default=Path("/dev/shm"),
                        help="where outputs go, never the source's folder (default /dev/shm)")
    parser.add_argument("--qemu-64", action="store_true", help="also run qemu-img on the 64 GiB disk")
    parser.add_argument("--results", type=Path, help="write all measurements as JSON here")
    parser.add_argument("--nice", type=int, default=0,
                        help="scheduling niceness for the benchmark and every run (e.g. -10 on a busy machine)")
    parser.add_argument("--profile", action="store_true",
                        help="after the 8 GiB runs: ours with --threads 1 and 2, and one run under perf")
    parser.add_argument("--planner", help="the plan example (snapshot-core): measure planning with and"
                        " without the cross-check")
    parser.add_argument("--plan-runs", type=int, default=7, help="runs of each planner variant (default 7)")
    parser.add_argument("--plan-only", action="store_true", help="measure planning only, no captures")
    parser.add_argument("--ours-arg", action="append", default=[],
                        help="extra argument for every ironic-snapshot run (repeatable)")
    args = parser.parse_args()

    if os.geteuid() != 0:
        print("bench: needs root (loop devices, read-only mounts)", file=sys.stderr)
        return 1
    for tool in ("qemu-img", "losetup", "e2fsck", "sfdisk"):
        if not shutil.which(tool):
            print("bench: %s is missing: run tests/setup.sh" % tool, file=sys.stderr)
            return 1
    if not os.access("/usr/bin/time", os.X_OK):
        print("bench: /usr/bin/time is missing: apt-get install time", file=sys.stderr)
        return 1

    if args.nice:
        # Inherited by every contender alike: less noise from other work, same for all.
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        print("bench: running at niceness %d" % os.getpriority(os.PRIO_PROCESS, 0))
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with tempfile.TemporaryDirectory(prefix="ironic-snapshot-bench.", dir=args.out_dir) as work:
        return bench(args, Path(work))


def bench(args, work):

    help_text = subprocess.run([args.cli, "capture", "--help"], capture_output=True, text=True).stdout
    has_noskip = "--no-skip-free-space" in help_text

    def ours(extra):
        return lambda dev, out: [args.cli, "capture", dev, "-o", str(out), "--force", "--json"] + extra + args.ours_arg

    def qemu(dev, out):
        return ["qemu-img", "convert", "-W", "-m", "16", "-c", "-O", "qcow2",
                "-o", "compression_type=zstd", dev, str(out)]

    def stream(limit):
        # The image goes to standard output (a file here), the report to --report.
        def make(dev, out):
            script = ('cli=$0 dev=$1 limit=$2 report=$3 out=$4; shift 4; '
                      'exec "$cli" capture "$dev" -o - --memory-limit "$limit" --report "$report" "$@" > "$out"')
            return ["sh", "-c", script, args.cli, dev, limit, str(out) + ".json", str(out)] + args.ours_arg
        return make

    streams = [("stream-%s" % limit, stream(limit)) for limit in args.stream]
    for limit in args.stream:
        parse_size_mib(limit)
    plans = [("8G", args.disk8, [("ours", ours([])), ("qemu", qemu)])]
    if has_noskip:
        plans[0][2].insert(1, ("ours-noskip", ours(["--no-skip-free-space"])))
    else:
        print("bench: the CLI has no --no-skip-free-space yet: that variant is not run")
    if args.stream_only:
        plans[0][2].clear()
    plans[0][2].extend(streams)
    if args.disk64 and not args.stream_only:
        contenders = [("ours", ours([]))]
        if args.qemu_64:
            contenders.append(("qemu", qemu))
        plans.append(("64G", args.disk64, contenders))
    if args.disk2t and streams:
        plans.append(("2T", args.disk2t, streams))

    results = {}
    planning = {}
    failures = []
    stamps = {}
    for label, disk, contenders in plans:
        st = os.stat(disk)
        stamps[disk] = (st.st_size, st.st_mtime_ns)
        with contextlib.ExitStack() as stack:
            dev = attach(stack, disk)
            # The kernel drops a block device's page cache when its last opener
            # closes it: hold it open so the warm-up read stays cached for the runs.
            stack.enter_context(open(dev, "rb", buffering=0))
            if args.planner:
                plan_cost(args, label, dev, planning, failures)
            if not args.plan_only:
                bench_disk(args, label, disk, dev, contenders, work, results, failures)
        subprocess.run(["sync"], check=False)
        st = os.stat(disk)
        if (st.st_size, st.st_mtime_ns) != stamps[disk]:
            failures.append("%s changed during the benchmark" % disk)

    print_planning(planning)
    missed = []
    if not args.plan_only:
        print_summary(results)
        missed = print_targets(results)
    if args.results:
        args.results.write_text(json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "runs": args.runs, "results": results, "planning": planning, "missed": missed,
            "failures": failures,
        }, indent=2))
        print("bench: measurements written to %s" % args.results)
    for f in failures:
        print("FAILED: %s" % f)
    return 1 if failures else 0


def plan_cost(args, label, dev, planning, failures):
    """Plans the disk ``--plan-runs`` times with the cross-check and as many
    without, alternately, after one untimed run of each (which caches the
    metadata both read); records medians and what the planner read."""
    variants = {"cross-check": [], "no cross-check": []}
    for i in range(args.plan_runs + 1):
        for name, extra in (("cross-check", []), ("no cross-check", ["--no-cross-check"])):
            out = json.loads(run([args.planner, dev] + extra))
            if i:
                variants[name].append(out)
    entry = {}
    for name, outs in variants.items():
        last = outs[-1]
        entry[name] = {
            "seconds": [o["seconds"] for o in outs],
            "median_s": median([o["seconds"] for o in outs]),
            "metadata_bytes_read": last["metadata_bytes_read"],
            "metadata_reads": last["metadata_reads"],
            "bytes_to_read": last["bytes_to_read"],
            "partitions": [(p["number"], p["content"], p["handling"], p.get("reason")) for p in last["partitions"]],
        }
        print("bench: %s plan, %-14s %8.1f ms median of %d, %8.2f MiB metadata in %5d reads, plans %.1f MiB"
              % (label, name + ":", entry[name]["median_s"] * 1000, len(outs),
                 last["metadata_bytes_read"] / MIB, last["metadata_reads"], last["bytes_to_read"] / MIB),
              flush=True)
    on, off = entry["cross-check"], entry["no cross-check"]
    if on["partitions"] != off["partitions"]:
        # A healthy disk: the cross-check must agree with the bitmaps.
        failures.append("%s: the cross-check changed the plan of a healthy disk: %s" % (label, on["partitions"]))
    planning[label] = entry


def print_planning(planning):
    for label, e in planning.items():
        on, off = e["cross-check"], e["no cross-check"]
        print("plan  %-4s cross-check costs %+.1f ms (%.1f vs %.1f ms) and %+.2f MiB of metadata"
              " (%.2f vs %.2f MiB, %d vs %d reads)" % (
                  label, (on["median_s"] - off["median_s"]) * 1000, on["median_s"] * 1000,
                  off["median_s"] * 1000, (on["metadata_bytes_read"] - off["metadata_bytes_read"]) / MIB,
                  on["metadata_bytes_read"] / MIB, off["metadata_bytes_read"] / MIB,
                  on["metadata_reads"], off["metadata_reads"]))


def bench_disk(args, label, disk, dev, contenders, work, results, failures):
    """Warm the cache, run the contenders alternately, validate first outputs."""
    if label == "8G":
        print("bench: %s: %s on %s (read-only); warming the page cache..." % (label, disk, dev), flush=True)
        print("bench: %s: read the whole device at %.0f MB/s" % (label, warm(dev)), flush=True)
    else:
        # Reading all 64 GiB would not fit the page cache; an untimed run of
        # ours reads what ours reads, which is what the scaling ratio measures.
        print("bench: %s: %s on %s (read-only); untimed warm-up run of %s..."
              % (label, disk, dev, contenders[0][0]), flush=True)
        out = work / "warmup.qcow2"
        report = Path(str(out) + ".json")
        try:
            timed(contenders[0][1](dev, out), out, work / "warmup.log",
                  report if contenders[0][0].startswith("stream") else None)
        except Exception as exc:
            failures.append("%s warm-up run: %s" % (label, exc))
            print("bench: FAILED %s warm-up run: %s" % (label, exc), flush=True)
            return
        out.unlink()
        report.unlink(missing_ok=True)
    for i in range(args.runs):
        for name, make in contenders:
            key = "%s %s" % (label, name)
            out = work / ("%s-%s-%d.qcow2" % (label, name, i))
            log = work / ("%s-%s-%d.log" % (label, name, i))
            report = Path(str(out) + ".json") if name.startswith("stream") else None
            entry = results.setdefault(key, {"runs": [], "validation": None})
            try:
                r = timed(make(dev, out), out, log, report)
            except Exception as exc:
                failures.append("%s run %d: %s" % (key, i + 1, exc))
                print("bench: FAILED %s run %d: %s" % (key, i + 1, exc), flush=True)
                out.unlink(missing_ok=True)
                continue
            finally:
                if report is not None:
                    report.unlink(missing_ok=True)
            entry["runs"].append(r)
            if report is not None:
                r["memory_limit_mib"] = parse_size_mib(name.split("-", 1)[1])
                r["passes"] = r["report"]["passes"]
            print("bench: %-16s run %d: %7.2f s wall, %7.2f s cpu, %6.1f MiB rss, %8.1f MiB out"
                  ", load %.1f before%s" % (key, i + 1, r["wall_s"], r["user_s"] + r["sys_s"], r["rss_mib"],
                                            r["size"] / MIB, r["load_before"],
                                            ", %d pass(es)" % r["passes"] if report is not None else ""),
                  flush=True)
            if entry["validation"] is None and report is not None:
                # A stream: the image it wrote has the digest it reports.
                try:
                    qemu_check(out)
                    if sha256_file(out) != r["report"]["sha256"]:
                        raise RuntimeError("sha256 of the output differs from the report's")
                    entry["validation"] = "qemu-img check ok, sha256 = report's"
                except Exception as exc:
                    entry["validation"] = "FAILED: %s" % exc
                    failures.append("%s validation: %s" % (key, exc))
            elif entry["validation"] is None and name != "qemu":
                try:
                    if name == "ours-noskip":
                        entry["validation"] = validate_identical(out, dev)
                    else:
                        entry["validation"] = validate_skipping(out, disk, dev, work)
                    print("bench: %-16s valid: %s" % (key, entry["validation"]), flush=True)
                    entry["digest_floor_s"] = digest_floor(out)
                    print("bench: %-16s hashing its image (md5+sha512+sha256 in parallel, hashlib):"
                          " %.2f s" % (key, entry["digest_floor_s"]), flush=True)
                except Exception as exc:
                    entry["validation"] = "FAILED: %s" % exc
                    failures.append("%s validation: %s" % (key, exc))
                    print("bench: FAILED %s validation: %s" % (key, exc), flush=True)
            elif entry["validation"] is None:
                try:
                    qemu_check(out)
                    entry["validation"] = "qemu-img check ok"
                except Exception as exc:
                    entry["validation"] = "FAILED: %s" % exc
                    failures.append("%s validation: %s" % (key, exc))
            out.unlink(missing_ok=True)
    if args.profile and label == "8G":
        profile(args, contenders, dev, work, results, failures)


def profile(args, contenders, dev, work, results, failures):
    """Where ours spends its time: thread scaling and a perf profile."""
    for name, make in contenders:
        if not name.startswith("ours"):
            continue
        for threads in ("1", "2"):
            key = "8G %s threads=%s" % (name, threads)
            out = work / "profile.qcow2"
            try:
                r = timed(make(dev, out) + ["--threads", threads], out, work / "profile.log")
            except Exception as exc:
                failures.append("%s: %s" % (key, exc))
                continue
            finally:
                out.unlink(missing_ok=True)
            results[key] = {"runs": [r], "validation": "not validated (profile run)"}
            print("bench: %-28s %7.2f s wall, %7.2f s user, %7.2f s sys" % (key, r["wall_s"], r["user_s"], r["sys_s"]),
                  flush=True)
    if not shutil.which("perf"):
        print("bench: perf is not installed: no profile (apt-get install linux-perf)")
        return
    name, make = contenders[0]
    out, data = work / "profile.qcow2", work / "perf.data"
    # cpu-clock sampling works in VMs without hardware counters.
    rec = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "-g", "-o", str(data), "--"]
                         + make(dev, out), capture_output=True, text=True)
    out.unlink(missing_ok=True)
    if rec.returncode != 0:
        print("bench: perf record failed (%d): %s" % (rec.returncode, rec.stderr.strip()[-500:]))
        return
    for sort in ("comm,dso", "sym"):
        rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none",
                              "--percent-limit", "1.5", "--sort", sort], capture_output=True, text=True)
        lines = [line for line in rep.stdout.splitlines() if line.strip() and not line.startswith("#")]
        print("bench: perf profile of 8G %s by %s (share of cpu-clock samples):" % (name, sort))
        for line in lines[:25]:
            print("    " + line.rstrip())


def stats(entry, field):
    return [r[field] for r in entry["runs"]]


def cpu_median(entry):
    """Median user+system seconds of an entry's runs, or None."""
    if not entry or not entry["runs"]:
        return None
    return median([r["user_s"] + r["sys_s"] for r in entry["runs"]])


def print_summary(results):
    print()
    print("%-28s %4s %22s %9s %9s %10s %10s  %s" % (
        "contender", "runs", "wall s median (min-max)", "cpu s", "rss MiB", "out MiB", "read MiB", "validation"))
    for key, e in results.items():
        if not e["runs"]:
            print("%-28s %4d %22s" % (key, 0, "no successful run"))
            continue
        walls = stats(e, "wall_s")
        cpu = [r["user_s"] + r["sys_s"] for r in e["runs"]]
        read = [r["report"]["bytes_read"] / MIB for r in e["runs"] if "report" in r and "bytes_read" in r["report"]]
        print("%-28s %4d %22s %9.2f %9.1f %10.1f %10s  %s" % (
            key, len(walls), "%.2f (%.2f-%.2f)" % (median(walls), min(walls), max(walls)),
            median(cpu), max(stats(e, "rss_mib")), median(stats(e, "size")) / MIB,
            "%.1f" % median(read) if read else "-", e["validation"] or "-"))
    print()


def print_targets(results):
    """Print each ratio with its target; return the missed ones."""
    def med(key, field):
        e = results.get(key)
        return median(stats(e, field)) if e and e["runs"] else None

    missed = []

    def check(name, value, op, bound):
        if value is None:
            print("ratio %-44s not measured" % name)
            return
        ok = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
        print("ratio %-44s %8.3f  (target %s %g)%s" % (name, value, op, bound, "" if ok else "  <- missed"))
        if not ok:
            missed.append("%s = %.2f, target %s %g" % (name, value, op, bound))

    q_t, q_s = med("8G qemu", "wall_s"), med("8G qemu", "size")
    for key, t_bound, s_bound in (("8G ours-noskip", TARGET_TIME_NOSKIP, TARGET_SIZE_NOSKIP),
                                  ("8G ours", TARGET_TIME_SKIP, TARGET_SIZE_SKIP)):
        o_t, o_s = med(key, "wall_s"), med(key, "size")
        if o_t is None and key == "8G ours-noskip":
            continue
        check("time qemu / %s" % key, q_t / o_t if q_t and o_t else None, ">=", t_bound)
        check("size %s / qemu" % key, o_s / q_s if q_s and o_s else None, "<=", s_bound)
    for key, e in results.items():
        if "ours" in key and e["runs"]:
            check("peak RSS MiB %s" % key, max(stats(e, "rss_mib")), "<", TARGET_RSS_MIB)
        elif "stream" in key and e["runs"]:
            limit = e["runs"][0]["memory_limit_mib"]
            check("peak RSS MiB %s (limit + %g)" % (key, STREAM_SLACK_MIB), max(stats(e, "rss_mib")), "<=",
                  limit + STREAM_SLACK_MIB)
    # CPU seconds do not depend on what else the machine runs: a steadier view.
    q_cpu = cpu_median(results.get("8G qemu"))
    for key in ("8G ours-noskip", "8G ours"):
        o_cpu = cpu_median(results.get(key))
        if q_cpu and o_cpu:
            print("info  %-44s %8.2f  (cpu seconds, no target)" % ("cpu time qemu / %s" % key, q_cpu / o_cpu))
    # The floor under any tool that reports these digests (see digest_floor).
    for key in ("8G ours-noskip", "8G ours"):
        floor = (results.get(key) or {}).get("digest_floor_s")
        if q_t and floor:
            print("info  %-44s %8.2f  (qemu time / hashing its image alone on %d cores)"
                  % ("best possible time qemu / %s" % key, q_t / floor, os.cpu_count()))
    q64, o64 = med("64G qemu", "wall_s"), med("64G ours", "wall_s")
    if q64 and o64:
        print("info  %-44s %8.2f  (wall seconds, no target)" % ("time qemu / 64G ours", q64 / o64))
    t8, t64 = med("8G ours", "wall_s"), med("64G ours", "wall_s")
    check("time 64G ours / 8G ours", t64 / t8 if t8 and t64 else None, "<=", TARGET_SCALING)
    for m in missed:
        print("TARGET MISSED: %s" % m)
    return missed


if __name__ == "__main__":
    sys.exit(main())
