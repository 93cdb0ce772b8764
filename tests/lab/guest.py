"""Runs a lab guest under qemu (TCG, OVMF) and talks to it over its serial console.

A :class:`Guest` is one ``qemu-system-x86_64`` process whose serial console
is its standard input and output. :meth:`Guest.expect` waits for text on the
console (partial lines too: a getty prompt has no newline), :meth:`Guest.sh`
types a command at the root prompt and returns its output and exit status.

qemu runs with ``-no-reboot``: a firmware reset ends the process, which lets
tests prove that a kexec did not go through the firmware.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.lab.build import PROMPT

__all__ = ["Guest", "GuestError", "boot"]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

#: Seconds a UEFI guest under TCG takes to its prompt at most (17-20 s seen idle).
BOOT_TIMEOUT = 240.0


class GuestError(AssertionError):
    """The guest did not show what was expected in time; carries the console tail."""


class Guest:
    """A running qemu guest and its serial console."""

    def __init__(self, proc: subprocess.Popen[bytes], console_log: Path) -> None:
        self.proc = proc
        self.console_log = console_log
        self._buf = bytearray()
        self._pos = 0
        self._lock = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.console_log, "ab") as log:
            while chunk := self.proc.stdout.read1(65536):
                log.write(chunk)
                log.flush()
                with self._lock:
                    self._buf += chunk
                    self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    def console(self) -> str:
        """Everything the console printed so far."""
        with self._lock:
            return self._buf.decode(errors="replace")

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """Waits for ``pattern`` (a regex) in console output not matched before."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                text = self._buf[self._pos:].decode(errors="replace")
                match = regex.search(text)
                if match:
                    self._pos += len(text[:match.end()].encode())
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = self._buf[-3000:].decode(errors="replace")
                    state = "ran out of time" if left <= 0 else f"qemu exited {self.proc.returncode}"
                    raise GuestError(f"{state} waiting for {pattern!r}; console tail:\n{tail}")
                self._lock.wait(min(left, 1.0))

    def send(self, text: str) -> None:
        """Types ``text`` on the console."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait_for_prompt(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Waits until root's shell prompt shows (after boot or a command)."""
        self.expect(re.escape(PROMPT), timeout)

    def sh(self, command: str, timeout: float = 120.0, check: bool = True) -> tuple[int, str]:
        """Runs ``command`` in the guest's root shell; returns (exit status, output)."""
        marker = uuid.uuid4().hex[:12]
        # The marker is split in the typed text so that an echo of the input
        # never matches: only the shell's printf joins it.
        self.send(f"{command}; printf '\\n%s %d\\n' '{marker[:6]}''{marker[6:]}' $?\n")
        match = self.expect(rf"(?s)^(.*?)\r?\n{marker} (\d+)\r?\n", timeout)
        output, status = match.group(1), int(match.group(2))
        output = output.replace(PROMPT, "").strip("\r\n")
        if check and status != 0:
            raise GuestError(f"{command!r} exited {status} in the guest:\n{output[-3000:]}")
        return status, output

    def wait_exit(self, timeout: float) -> int:
        """Waits for qemu to end (a guest power-off or a firmware reset with -no-reboot)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as err:
            raise GuestError(f"qemu still running after {timeout} s; console tail:\n"
                             f"{self.console()[-3000:]}") from err

    def kill(self) -> None:
        """Ends qemu at once (if it still runs)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def boot(disks: Sequence[Path | tuple[Path, str]], work: Path, *, firmware: str = "uefi",
         memory_mib: int = 1024, extra: Sequence[str] = (), network: bool = False
         ) -> Iterator[Guest]:
    """Boots a guest from ``disks`` (the first is the boot disk); always ends qemu.

    ``firmware`` is ``uefi`` (OVMF, a fresh copy of its variable store) or
    ``bios`` (qemu's SeaBIOS).

    Each disk is a path (its format guessed from the suffix: ``.qcow2`` or
    raw) or ``(path, format)``; each becomes a virtio disk in order
    (``/dev/vda``, ``/dev/vdb`` ...). The console is logged to
    ``work/console.log``.

    ``network`` gives the guest one virtio NIC on qemu's user network: the
    guest is 10.0.2.15/24 by convention (nothing configures it by itself) and
    reaches this machine's 127.0.0.1 as 10.0.2.2.
    """
    work.mkdir(parents=True, exist_ok=True)
    args = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-M", "q35",
            "-m", str(memory_mib), "-smp", "2", "-nographic", "-no-reboot",
            "-nic", "user,model=virtio-net-pci" if network else "none"]
    if firmware == "uefi":
        vars_copy = work / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        args += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,file={vars_copy}"]
    elif firmware != "bios":
        raise ValueError(f"firmware must be uefi or bios, not {firmware!r}")
    for disk in disks:
        path, fmt = disk if isinstance(disk, tuple) else (disk, "qcow2" if str(disk).endswith(".qcow2") else "raw")
        args += ["-drive", f"file={path},format={fmt},if=virtio,cache=unsafe"]
    args += list(extra)
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    guest = Guest(proc, work / "console.log")
    try:
        yield guest
    finally:
        guest.kill()
