"""Pieces every loopback server fixture shares: config files, starting, logs, stopping."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path


def venv_bin() -> Path:
    """The ``bin`` folder of the venv running the tests, which holds the services' commands."""
    return Path(sys.executable).parent


def write_conf(path: Path, sections: Mapping[str, Mapping[str, str]],
               extra: Mapping[str, Mapping[str, str]] | None = None) -> None:
    """Writes an oslo.config style INI file from ``{section: {key: value}}``.

    ``extra`` sections are merged over ``sections`` key by key (a fixture's
    ``extra_conf``).
    """
    merged = {section: dict(values) for section, values in sections.items()}
    for section, values in (extra or {}).items():
        merged.setdefault(section, {}).update(values)
    lines = []
    for section, values in merged.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))


def wait_until_ready(name: str, port: int, process: subprocess.Popen, ready: Callable[[], bool], *,
                     timeout: float, interval: float, output: Path, output_chars: int = 2000,
                     transient: tuple[type[BaseException], ...] = (OSError,),
                     failing: Callable[[], bool] = lambda: False,
                     log_tail: Callable[[], str] | None = None) -> None:
    """Polls ``ready()`` until it holds; raises ``RuntimeError`` saying why it never did.

    :param name: the service's name in the messages.
    :param port: the port it listens on, for the timeout message.
    :param ready: whether the service answers as it should; ``transient``
        exceptions it raises count as "not yet".
    :param output: the process's captured stdout/stderr, whose tail tells why
        it exited (or ``failing()`` said it fails) at start.
    :param log_tail: the service log's tail for the timeout message.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None or failing():
            raise RuntimeError(f"{name} failed at start:\n"
                               + output.read_text(errors="replace")[-output_chars:])
        try:
            if ready():
                return
        except transient:
            pass
        if time.monotonic() > deadline:
            tail = f": {log_tail()}" if log_tail is not None else ""
            raise RuntimeError(f"{name} did not answer on port {port} within {timeout:.0f} s{tail}")
        time.sleep(interval)


def read_log_tail(path: Path, lines: int, keep: Callable[[str], bool] | None = None) -> str:
    """The last ``lines`` lines of a log (those ``keep`` accepts), for assertion messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    kept = [line for line in text.splitlines() if keep is None or keep(line)]
    return "\n".join(kept[-lines:])


def stop_process_group(process: subprocess.Popen, timeout: float, *, reap_group: bool = False) -> None:
    """SIGTERM to the process group, SIGKILL if it lingers past ``timeout`` s.

    :param reap_group: SIGKILL the group once more after the leader is gone:
        gunicorn workers may outlive a killed master for a moment.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    if reap_group:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
