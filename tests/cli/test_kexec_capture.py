"""kexec-capture refusals that need no guest (the guest lab tests the rest: tests/lab/test_kexec.py).

Only refusals that come before anything reads this machine's kernel state:
the jump itself never runs on this machine's kernel.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def run(binary: Path, *args: str, user: int | None = None) -> subprocess.CompletedProcess:
    prefix = ["setpriv", "--reuid", str(user), "--regid", str(user), "--clear-groups"] if user else []
    return subprocess.run([*prefix, str(binary), "kexec-capture", *args],
                          capture_output=True, text=True, timeout=60)


def test_not_root_is_refused_with_exit_7(cli_binary: Path) -> None:
    proc = run(cli_binary, "--round-trip-only", "/dev/null", user=65534)
    assert proc.returncode == 7, proc.stderr
    assert "must run as root (effective user id is 65534)" in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_capture_needs_one_destination(cli_binary: Path) -> None:
    # Checked before anything reads this machine's kernel state.
    proc = run(cli_binary, "/dev/null")
    assert proc.returncode == 2, proc.stderr
    assert "give one destination" in proc.stderr, proc.stderr
    proc = run(cli_binary, "/dev/null", "-o", "x.qcow2", "--glance-image", "i",
               "--glance-endpoint", "http://127.0.0.1:9")
    assert proc.returncode == 2, proc.stderr


def test_status_without_a_record_exits_9(cli_binary: Path) -> None:
    # This machine has no EFI variable of ours (and may have no efivarfs at all).
    proc = run(cli_binary, "--status")
    assert proc.returncode == 9, proc.stderr
    assert "no kexec-capture record" in proc.stderr, proc.stderr
