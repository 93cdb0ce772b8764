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
import dataclasses
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.stack.glance import free_port
from tests.stack.process import stop_process_group, venv_bin, write_conf

if TYPE_CHECKING:
    from tests.stack.ironic import IronicServer

__all__ = ["Agent", "AgentWatch", "agent_on_demand", "start_ipa"]


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
              extra_conf: Mapping[str, Mapping[str, str]] | None = None,
              env: Mapping[str, str] | None = None) -> Iterator[Agent]:
    """Starts an agent talking to the Ironic API at ``api_url``; stops it on exit.

    :param workdir: a folder for the config and the log (``ipa.log``).
    :param extra_conf: sections merged over the generated config, such as
        ``{"snapshot": {"progress_interval": "1"}}``.
    :param env: environment variables added to the agent's (such as a
        ``PYTHONPATH`` holding a test-only hardware manager).
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
        cwd=workdir, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, **env) if env else None)
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


@dataclasses.dataclass
class AgentWatch:
    """What :func:`agent_on_demand` saw."""

    agents: list[Agent] = dataclasses.field(default_factory=list)
    states: list[str] = dataclasses.field(default_factory=list)
    #: The node records seen while it serviced (admin view).
    service_records: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def agent_log(self) -> str:
        return "\n".join(agent.log() for agent in self.agents)


@contextlib.contextmanager
def agent_on_demand(ironic: IronicServer, node: str, workdir: Path,
                    on_service: Any = None,
                    agent_conf: dict[str, dict[str, str]] | None = None,
                    agent_env: Mapping[str, str] | None = None,
                    per_service: bool = False,
                    wait_states: tuple[str, ...] = ("service wait",)) -> Iterator[AgentWatch]:
    """Starts a fresh agent when ``node`` waits for one; stops it on exit.

    :param on_service: called once with the node record when the node is
        first seen servicing with a step (in the watcher thread).
    :param agent_conf: sections merged into the agent's config file, such as
        the operator's ``[snapshot]`` credential.
    :param agent_env: environment variables added to the agent's.
    :param per_service: stop the agent whenever the node is ``active`` again,
        so that every service (several in one watch, as a tempest run makes)
        gets a fresh agent, as a real ramdisk boot would.
    :param wait_states: the states in which the node waits for an agent
        (``wait call-back`` for a deploy through the ``direct`` interface).
    """
    watch = AgentWatch()
    stop = threading.Event()
    contexts: list[Any] = []
    called = False

    def loop() -> None:
        nonlocal called
        while not stop.is_set():
            try:
                record = ironic.node(node)
            except Exception:  # noqa: BLE001 - keep watching through API hiccups
                time.sleep(0.5)
                continue
            state = record["provision_state"]
            if not watch.states or watch.states[-1] != state:
                watch.states.append(state)
            if state in ("service", "service wait") and record.get("service_step"):
                watch.service_records.append(record)
                if on_service is not None and not called:
                    called = True
                    on_service(record)
            if per_service and state == "active" and contexts:
                contexts.pop().__exit__(None, None, None)
            if state in wait_states and not contexts:
                context = start_ipa(workdir, ironic.endpoint, extra_conf=agent_conf, env=agent_env)
                watch.agents.append(context.__enter__())
                contexts.append(context)
            time.sleep(0.3)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join(timeout=30)
        for context in contexts:
            context.__exit__(None, None, None)
