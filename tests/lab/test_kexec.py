"""kexec-capture in a real guest: refusals, a capture into Glance from the ramdisk, and back.

One Debian guest (UEFI, GRUB, TCG, qemu with ``-no-reboot`` so a firmware
reset would end the process) with one NIC on qemu's user network (the host's
loopback Glance is 10.0.2.2 there) gets the static CLI and a writer service
(a shell loop appending fixed-size records to a file and rows to a sqlite
database) on a second small disk and:

1. as an unprivileged user, is refused (exit 7) with a message naming root;
2. with ``--dry-run``: the ramdisk is built in memory with the disk's and
   the NIC's modules, the network to reproduce and no token on the ramdisk's
   command line, loaded by ``kexec_file_load``, then unloaded;
3. with the writer running, captures into a queued Glance image: systemd
   stops the services and unmounts the filesystems, the ramdisk loads the
   modules, sets up the interface (found by MAC), captures the offline disk
   with free space skipped, uploads and verifies, stores its record in an
   EFI variable and kexecs back into the same kernel and command line: the
   guest reaches its login prompt again without a firmware reset (qemu still
   runs), ``kexec-capture --status`` shows the record. The image passes
   ``qemu-img check``; its root filesystem passes ``e2fsck -fn``, its sqlite
   database ``PRAGMA integrity_check``, and its appended file ends on a whole
   record;
4. Glance dies after the checks that precede the jump: the ramdisk fails the
   upload, returns within the timeout, and ``--status`` names the failure;
5. captures to a file on a third disk (``-o``): the ramdisk mounts that
   disk's filesystem, writes the image and its record beside it
   (``OUT.kexec.json``); the image passes ``qemu-img check`` and its sha256
   is the record's;
6. with ``sysctl kernel.kexec_load_disabled=1`` (one way until a reboot, so
   last): refused with exit 7 and a message naming the sysctl, nothing
   stopped (systemd still running, no kernel loaded, the shell answers).

The downtime (command to prompt) and its parts are printed.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.blockdev import loop_device, run
from tests.lab import build
from tests.lab import guest as lab

#: The binary in the guest, on a tmpfs of its own: /run and /dev/shm are noexec there.
CLI = "/opt/isnap/ironic-snapshot"

#: Each record the writer appends: "record NNNNNNNN\n".
RECORD = 16

WRITER = """#!/bin/sh
# Appends one fixed-size record to a file and one row to a sqlite database, forever.
mkdir -p /var/lib/writer
sqlite3 /var/lib/writer/rows.db 'create table if not exists r (i integer primary key, t text)'
i=0
while :; do
    i=$((i + 1))
    printf 'record %08d\\n' "$i" >> /var/lib/writer/records.log
    sqlite3 /var/lib/writer/rows.db "insert into r (t) values ('record $i')"
done
"""

WRITER_UNIT = """[Unit]
Description=lab writer: records to a file and a sqlite database

[Service]
ExecStart=/bin/sh /usr/local/sbin/writer
"""

TOKEN = "kexec-lab-secret-token"


def install_cli(vm: lab.Guest) -> None:
    """Copies the CLI from the files disk (/dev/vdb) to a fresh tmpfs at :data:`CLI`."""
    vm.sh("mkdir -p /opt/isnap && mount -t tmpfs -o mode=0755 isnap /opt/isnap && "
          f"mount -o ro /dev/vdb /mnt && cp /mnt/ironic-snapshot {CLI} && umount /mnt")


def network_up(vm: lab.Guest) -> None:
    """qemu's user network, configured by hand (the guest has no network manager)."""
    vm.sh("dev=$(ls /sys/class/net | grep -v '^lo$' | head -n1) && ip link set $dev up && "
          "ip addr add 10.0.2.15/24 dev $dev && ip route add default via 10.0.2.2")


def jump(vm: lab.Guest, command: str) -> dict[str, float]:
    """Runs a kexec-capture that jumps; waits for the prompt after the return; returns timings."""
    sent = time.monotonic()
    vm.send(command + "\n")
    vm.expect(r"ironic-snapshot ramdisk: running as /init", 300)
    in_ramdisk = time.monotonic()
    vm.expect(r"ironic-snapshot ramdisk: kexec back into the original kernel", 900)
    leaving = time.monotonic()
    vm.wait_for_prompt(300)
    back = time.monotonic()
    assert vm.proc.poll() is None, "qemu ended: the guest went through a firmware reset"
    return {"stop": in_ramdisk - sent, "ramdisk": leaving - in_ramdisk,
            "return": back - leaving, "downtime": back - sent}


def status(vm: lab.Guest) -> tuple[int, dict]:
    """``kexec-capture --status`` in the guest: exit status and the record."""
    install_cli(vm)  # its tmpfs went with the old boot
    code, out = vm.sh(f"{CLI} kexec-capture --status 2>/dev/null", check=False)
    return code, json.loads(out.strip().splitlines()[-1])


def boot_facts(vm: lab.Guest) -> list[str]:
    """Boot id, command line and kernel release."""
    return vm.sh("cat /proc/sys/kernel/random/boot_id /proc/cmdline; uname -r")[1].split("\n")


def check_image(image: Path, disk: Path, tmp: Path) -> dict[str, object]:
    """qemu-img check; e2fsck -fn of the root filesystem; the writer's files read back."""
    run("qemu-img", "check", "-q", image)
    raw = tmp / "restored.raw"
    run("qemu-img", "convert", "-O", "raw", image, raw)
    start = build._partition_start(disk, 2)
    size = (int(run("sgdisk", "-i", "2", disk, text=True).stdout.split("Last sector: ")[1]
                .split()[0]) + 1) * 512 - start
    got = tmp / "restored" / "writer"
    got.parent.mkdir()
    with loop_device(raw, start, size, read_only=True) as dev:
        fsck = subprocess.run(["e2fsck", "-fn", dev], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        run("debugfs", "-c", "-R", f"rdump /var/lib/writer {got.parent}", dev)
    raw.unlink()
    records = (got / "records.log").read_bytes()
    assert records and len(records) % RECORD == 0 and records.endswith(b"\n"), records[-64:]
    last = int(records[-RECORD:].split()[1])
    # A hot journal beside the database (sqlite3 killed mid-insert) is rolled back here.
    with sqlite3.connect(got / "rows.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("select count(*) from r").fetchone()[0]
    assert rows > 0 and abs(rows - last) <= 1, (rows, last)
    return {"records": last, "rows": rows}


def test_kexec_capture_to_glance_and_back(lab_disk: Callable[[str], tuple[Path, str]],
                                          disk_copy: Callable[[Path], Path], static_cli: Path,
                                          glance, tmp_path: Path) -> None:
    built, firmware = lab_disk("uefi-grub")
    disk = disk_copy(built)
    (tmp_path / "writer").write_text(WRITER)
    (tmp_path / "writer.service").write_text(WRITER_UNIT)
    files = build.files_disk(tmp_path / "files.raw", {
        "ironic-snapshot": static_cli, "writer": tmp_path / "writer",
        "writer.service": tmp_path / "writer.service"})
    out_disk = build.files_disk(tmp_path / "out.raw", {}, size_mib=512)
    port = glance.endpoint.rsplit(":", 1)[1]
    cloud = f"OS_TOKEN={TOKEN} {CLI} kexec-capture --glance-endpoint http://10.0.2.2:{port}"
    started = time.monotonic()
    with lab.boot([disk, files, out_disk], tmp_path / "vm", firmware=firmware, memory_mib=2048,
                  network=True) as vm:
        vm.wait_for_prompt()
        boot_seconds = time.monotonic() - started
        install_cli(vm)
        network_up(vm)

        # 1. Not root: refused before anything, naming the cause.
        status_code, out = vm.sh(f"setpriv --reuid 65534 --regid 65534 --clear-groups "
                                 f"{CLI} kexec-capture --round-trip-only /dev/vda", check=False)
        assert status_code == 7, out
        assert "must run as root" in out, out

        # 2. Dry run: built, loaded, unloaded; the network is in it, the token is not on a cmdline.
        image = glance.create_image("kexec-capture")
        _, out = vm.sh(f"{cloud} --glance-image {image['id']} --dry-run /dev/vda 2>&1")
        summary = json.loads(out.strip().splitlines()[-1])
        modules = [Path(m).name for m in summary["modules"]]
        for needed in ("virtio_blk.ko", "virtio_pci.ko", "virtio_net.ko"):
            assert needed in modules, summary
        assert modules.index("virtio_pci_modern_dev.ko") < modules.index("virtio_pci.ko"), summary
        assert summary["ramdisk_bytes"] > 20 << 20, summary
        assert "root=" not in summary["ramdisk_cmdline"], summary
        assert TOKEN not in out
        (iface,) = summary["network"]["interfaces"]
        assert iface["addresses"] == [["10.0.2.15", 24]], summary
        assert vm.sh("cat /sys/kernel/kexec_loaded")[1].strip() == "0"
        assert glance.get_image(image["id"])["status"] == "queued"

        # 3. The capture, with the writer writing until systemd stops it.
        vm.sh("mount -o ro /dev/vdb /mnt && cp /mnt/writer /usr/local/sbin/writer && "
              "cp /mnt/writer.service /etc/systemd/system/ && umount /mnt && "
              "systemctl daemon-reload && systemctl start writer && sleep 3 && "
              "test -s /var/lib/writer/records.log")
        disk_bytes = int(vm.sh("blockdev --getsize64 /dev/vda")[1])
        before = boot_facts(vm)
        capture_times = jump(vm, f"{cloud} --glance-image {image['id']} --timeout 900 /dev/vda")
        after = boot_facts(vm)
        assert after[0] != before[0], "the boot id did not change: no new kernel ran"
        assert after[1:] == before[1:], (before, after)
        dmesg = vm.sh("dmesg | grep -i 'EXT4-fs' || true")[1]
        assert "recovery complete" not in dmesg, dmesg
        code, record = status(vm)
        assert code == 0 and record["ok"], record
        assert record["target"] == f"glance:{image['id']}", record
        stored = glance.get_image(image["id"])
        assert stored["status"] == "active", stored
        assert stored["size"] == record["report"]["image_size"], (stored, record)
        assert record["report"]["virtual_size"] == disk_bytes, record
        # Free space skipped: far less read than the disk holds.
        assert record["report"]["bytes_read"] < disk_bytes // 2, record
        written = check_image(glance.store_dir / image["id"], disk, tmp_path)

        # 4. Glance gone once the jump is decided: the ramdisk fails and comes back in time.
        network_up(vm)
        lost = glance.create_image("kexec-capture-lost")
        vm.send(f"{cloud} --glance-image {lost['id']} --timeout 300 /dev/vda\n")
        vm.expect(r"stopping the system and jumping into it", 120)
        glance.kill()
        failed_times = jump(vm, "")
        code, failed = status(vm)
        assert code == 8 and not failed["ok"], failed
        assert failed["stage"] == "capture" and "Glance" in failed["error"], failed
        assert failed_times["downtime"] < 300 + 120, failed_times

        # 5. To a file on another disk.
        vm.sh("mkdir -p /srv/out && mount /dev/vdc /srv/out")
        file_times = jump(vm, f"{CLI} kexec-capture -o /srv/out/node.qcow2 --timeout 600 /dev/vda")
        code, to_file = status(vm)
        assert code == 0 and to_file["target"] == "/srv/out/node.qcow2", to_file

        # 6. kexec disabled: refused, nothing stopped.
        vm.sh("sysctl -q kernel.kexec_load_disabled=1")
        status_code, out = vm.sh(f"{CLI} kexec-capture --round-trip-only /dev/vda", check=False)
        assert status_code == 7, out
        assert "kexec_load_disabled" in out, out
        state = vm.sh("systemctl is-system-running || true")[1]
        assert state.strip() in ("running", "degraded"), state
        assert vm.sh("cat /sys/kernel/kexec_loaded")[1].strip() == "0"

        vm.send("systemctl poweroff\n")
        vm.wait_exit(120)
    for name in ("node.qcow2", "node.qcow2.kexec.json"):
        run("debugfs", "-c", "-R", f"dump /{name} {tmp_path / name}", out_disk)
    run("qemu-img", "check", "-q", tmp_path / "node.qcow2")
    sha = run("sha256sum", tmp_path / "node.qcow2", text=True).stdout.split()[0]
    assert sha == to_file["report"]["sha256"], to_file
    assert json.loads((tmp_path / "node.qcow2.kexec.json").read_text())["ok"]
    ramdisk = record["timings"]
    print(f"\nboot to prompt {boot_seconds:.1f} s; capture to Glance: downtime (command to prompt) "
          f"{capture_times['downtime']:.1f} s = stop to ramdisk /init {capture_times['stop']:.1f} s"
          f" + ramdisk {capture_times['ramdisk']:.1f} s (in it: {ramdisk}) + way back to the prompt "
          f"{capture_times['return']:.1f} s; image {record['report']['image_size']} B of a "
          f"{disk_bytes} B disk, {record['report']['bytes_read']} B read; writer got "
          f"{written['records']} records; Glance down: downtime {failed_times['downtime']:.1f} s; "
          f"to a file: downtime {file_times['downtime']:.1f} s (ramdisk {to_file['timings']})")
