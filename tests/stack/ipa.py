"""A real ironic-python-agent process on loopback for tests.

Start one only once the node waits for an agent (``service wait``), and a fresh
one for every step run: the agent token is minted once per lookup. The agent
runs from the test virtualenv, so it loads every hardware manager installed
there, ``ironic-snapshot``'s included. Its API port is picked free, never 9999.

The agent acts on the machine it runs on: the node must carry root device
hints naming the disk under test (a loop device), or the agent would pick
this machine's own disk.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.stack.glance import free_port
from tests.stack.process import stop_process_group, venv_bin, write_conf

__all__ = ["Agent", "start_ipa"]


class Agent:
    """A running ironic-python-agent process.

    :ivar log_path: the agent's log file.
    """

    def __init__(self, process: subprocess.Popen, workdir: Path, port: int):
        self.process = process
        self.workdir = workdir
        self.port = port
        self.log_path = workdir / "ipa.log"

    def log(self) -> str:
        """The agent's whole log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the log, for assertion messages."""
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self) -> None:
        """Stops the agent: SIGTERM to its process group, SIGKILL if it lingers."""
        stop_process_group(self.process, timeout=15)


@contextlib.contextmanager
def start_ipa(workdir: Path, api_url: str, *,
              extra_conf: Mapping[str, Mapping[str, str]] | None = None) -> Iterator[Agent]:
    """Starts an agent talking to the Ironic API at ``api_url``; stops it on exit.

    :param workdir: a folder for the config and the log (``ipa.log``).
    :param extra_conf: sections merged over the generated config, such as
        ``{"snapshot": {"progress_interval": "1"}}``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    sections: dict[str, dict[str, str]] = {
        "DEFAULT": {
            "api_url": api_url,
            "listen_host": "127.0.0.1",
            "listen_port": str(port),
            "advertise_host": "127.0.0.1",
            "advertise_port": str(port),
            "insecure": "true",
            "enable_auto_tls": "false",
            "collect_lldp": "false",
            "lookup_timeout": "120",
            "lookup_interval": "1",
            # Loop devices never match the root device hints of the agent's
            # own disk listing: do not wait for them to appear.
            "disk_wait_attempts": "1",
            "disk_wait_delay": "0",
            "hardware_initialization_delay": "0",
            "log_file": str(workdir / "ipa.log"),
            "debug": "true",
            "use_stderr": "false",
        },
        "snapshot": {"progress_interval": "1"},
    }
    conf = workdir / "ipa.conf"
    write_conf(conf, sections, extra_conf)
    output = open(workdir / "ipa.stdout", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(venv_bin() / "ironic-python-agent"), "--config-file", str(conf)],
        cwd=workdir, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    agent = Agent(process, workdir, port)
    try:
        time.sleep(0.2)
        if process.poll() is not None:
            raise RuntimeError("ironic-python-agent exited at start: "
                               + (workdir / "ipa.stdout").read_text(errors="replace")[-2000:])
        yield agent
    finally:
        agent.stop()
        output.close()
