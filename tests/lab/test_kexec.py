"""kexec-capture (preview) in a real guest: refusals before anything stops, and the round trip.

One Debian guest (UEFI, GRUB, TCG, qemu with ``-no-reboot`` so a firmware
reset would end the process) gets the static CLI on a second small disk and:

1. as an unprivileged user, is refused (exit 7) with a message naming root;
2. with ``--dry-run``: the ramdisk is built in memory with the disk's modules
   and loaded by ``kexec_file_load``, then unloaded;
3. jumps: systemd stops the system, the kernel runs the binary as the
   ramdisk's ``/init`` (its lines on the serial console), which loads the
   modules and kexecs back into the same kernel with its initrd and command
   line: the guest reaches its login prompt again without a firmware reset
   (qemu still runs), with a new boot id and a root filesystem that needed no
   journal recovery (it was unmounted cleanly);
4. with ``sysctl kernel.kexec_load_disabled=1`` (one way until a reboot, so
   last): refused with exit 7 and a message naming the sysctl, nothing
   stopped (systemd still running, no kernel loaded, the shell answers).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from tests.lab import build
from tests.lab import guest as lab

#: The binary in the guest, on a tmpfs of its own: /run and /dev/shm are noexec there.
CLI = "/opt/isnap/ironic-snapshot"


def install_cli(vm: lab.Guest) -> None:
    """Copies the CLI from the files disk (/dev/vdb) to a fresh tmpfs at :data:`CLI`."""
    vm.sh("mkdir -p /opt/isnap && mount -t tmpfs -o mode=0755 isnap /opt/isnap && "
          f"mount -o ro /dev/vdb /mnt && cp /mnt/ironic-snapshot {CLI} && umount /mnt")


def test_kexec_round_trip_and_refusals(lab_disk: Callable[[str], tuple[Path, str]],
                                      disk_copy: Callable[[Path], Path], static_cli: Path,
                                      tmp_path: Path) -> None:
    built, firmware = lab_disk("uefi-grub")
    disk = disk_copy(built)
    files = build.files_disk(tmp_path / "files.raw", {"ironic-snapshot": static_cli})
    started = time.monotonic()
    with lab.boot([disk, files], tmp_path / "vm", firmware=firmware, memory_mib=1024) as vm:
        vm.wait_for_prompt()
        boot_seconds = time.monotonic() - started
        install_cli(vm)

        # 1. Not root: refused before anything, naming the cause.
        status, out = vm.sh(f"setpriv --reuid 65534 --regid 65534 --clear-groups "
                            f"{CLI} kexec-capture --round-trip-only /dev/vda", check=False)
        assert status == 7, out
        assert "must run as root" in out, out

        # 2. Dry run: built, loaded, unloaded.
        _, out = vm.sh(f"{CLI} kexec-capture --round-trip-only --dry-run /dev/vda 2>&1")
        summary = json.loads(out.strip().splitlines()[-1])
        modules = [Path(m).name for m in summary["modules"]]
        assert "virtio_blk.ko" in modules, summary
        assert "virtio_pci.ko" in modules, summary
        assert modules.index("virtio_pci_modern_dev.ko") < modules.index("virtio_pci.ko"), summary
        assert summary["ramdisk_bytes"] > 20 << 20, summary
        assert "root=" not in summary["ramdisk_cmdline"], summary
        _, loaded = vm.sh("cat /sys/kernel/kexec_loaded")
        assert loaded.strip() == "0"

        disk_bytes = int(vm.sh("blockdev --getsize64 /dev/vda")[1])
        _, before = vm.sh("cat /proc/sys/kernel/random/boot_id /proc/cmdline; uname -r")
        # 3. The jump there and back.
        jump = time.monotonic()
        vm.send(f"{CLI} kexec-capture --round-trip-only /dev/vda\n")
        vm.expect(r"ironic-snapshot ramdisk: running as /init", 300)
        in_ramdisk = time.monotonic()
        match = vm.expect(r"ironic-snapshot ramdisk: loaded (\d+) of (\d+) modules([^\r\n]*)", 60)
        assert match.group(1) == match.group(2), match.group(0)
        # The disk's modules loaded from the ramdisk bring the disk up there.
        match = vm.expect(r"ironic-snapshot ramdisk: disk vda ([^\r\n]*)", 60)
        assert match.group(1) == f"is here: {disk_bytes} bytes", match.group(0)
        vm.expect(r"ironic-snapshot ramdisk: kexec back into the original kernel", 120)
        vm.wait_for_prompt(300)
        back = time.monotonic()
        assert vm.proc.poll() is None, "qemu ended: the guest went through a firmware reset"
        _, after = vm.sh("cat /proc/sys/kernel/random/boot_id /proc/cmdline; uname -r")
        b_id, b_cmdline, b_release = before.split("\n")
        a_id, a_cmdline, a_release = after.split("\n")
        assert a_id != b_id, "the boot id did not change: no new kernel ran"
        assert (a_cmdline, a_release) == (b_cmdline, b_release)
        _, dmesg = vm.sh("dmesg | grep -i 'EXT4-fs' || true")
        assert "recovery complete" not in dmesg, dmesg
        assert re.search(r"EXT4-fs \(vda2\): mounted filesystem", dmesg), dmesg

        # 4. kexec disabled: refused, nothing stopped.
        install_cli(vm)  # its tmpfs went with the old boot
        vm.sh("sysctl -q kernel.kexec_load_disabled=1")
        status, out = vm.sh(f"{CLI} kexec-capture --round-trip-only /dev/vda", check=False)
        assert status == 7, out
        assert "kexec_load_disabled" in out, out
        _, state = vm.sh("systemctl is-system-running || true")
        assert state.strip() in ("running", "degraded"), state
        _, loaded = vm.sh("cat /sys/kernel/kexec_loaded")
        assert loaded.strip() == "0"

        vm.send("systemctl poweroff\n")
        vm.wait_exit(120)
    print(f"\nboot to prompt {boot_seconds:.1f} s; jump to ramdisk /init {in_ramdisk - jump:.1f} s; "
          f"round trip (command to prompt) {back - jump:.1f} s")
