"""A real RabbitMQ broker on loopback for tests (Debian's ``rabbitmq-server``).

The Debian package does not start a broker here; this starts one as a plain
process with its node name, data, logs, Erlang cookie and every port (AMQP,
distribution, epmd) of its own on 127.0.0.1, so it neither needs nor touches
a system broker. The default ``guest`` user may log in from loopback.

Usage::

    with start_rabbitmq(tmp_path / "rabbit") as rabbit:
        transport_url = rabbit.transport_url
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.stack.glance import free_port
from tests.stack.process import read_log_tail, stop_process_group, wait_until_ready

__all__ = ["RabbitServer", "start_rabbitmq"]

#: Seconds to wait for the broker to accept AMQP connections (Erlang boots
#: slowly: 14 s on a quiet machine, over 90 s once at a load of 12).
START_TIMEOUT = 300.0

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class RabbitServer:
    """A running broker.

    :ivar transport_url: the oslo.messaging ``transport_url`` of the broker.
    """

    def __init__(self, port: int, workdir: Path, process: subprocess.Popen,
                 epmd: subprocess.Popen):
        self.port = port
        self.workdir = workdir
        self.process = process
        self.epmd = epmd
        self.transport_url = f"rabbit://guest:guest@127.0.0.1:{port}/"

    def answers_amqp(self) -> bool:
        """Whether the broker answers an AMQP 0-9-1 protocol header with Connection.Start."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            frame = sock.recv(7)
        # A method frame (type 1) on channel 0.
        return len(frame) == 7 and frame[0] == 1 and frame[1:3] == b"\x00\x00"

    def log_tail(self, lines: int = 30) -> str:
        """The end of the broker's log, for error messages."""
        logs = sorted((self.workdir / "log").glob("*.log"))
        return read_log_tail(logs[0], lines) if logs else "(no log)"

    def stop(self) -> None:
        """Stops the broker and its epmd: SIGTERM to the group, SIGKILL if it lingers."""
        stop_process_group(self.process, timeout=30, reap_group=True)
        stop_process_group(self.epmd, timeout=10)


@contextlib.contextmanager
def start_rabbitmq(workdir: Path) -> Iterator[RabbitServer]:
    """Starts a broker in ``workdir`` on free ports of 127.0.0.1; stops it on exit."""
    if not os.path.exists(SERVER) or shutil.which("erl") is None:
        raise RuntimeError(f"{SERVER} not found: install Debian's rabbitmq-server "
                           "(tests/apt-packages.txt)")
    workdir = Path(workdir)
    for sub in ("mnesia", "log", "home"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    port, dist_port, epmd_port = free_port(), free_port(), free_port()
    (workdir / "enabled_plugins").write_text("[].\n")
    (workdir / "rabbitmq.conf").write_text(
        "loopback_users.guest = true\n"
        "log.console = false\n"
        # The test machine's disk may be nearly full of images: never block
        # publishers for free space or memory.
        "disk_free_limit.absolute = 1\n"
        "vm_memory_high_watermark.relative = 0.9\n")
    cookie = workdir / "home" / ".erlang.cookie"
    cookie.write_text(os.urandom(16).hex())
    cookie.chmod(0o400)
    node = f"rabbit-test-{port}@localhost"
    env = dict(
        os.environ,
        HOME=str(workdir / "home"),
        RABBITMQ_NODENAME=node,
        RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
        RABBITMQ_NODE_PORT=str(port),
        RABBITMQ_DIST_PORT=str(dist_port),
        ERL_EPMD_ADDRESS="127.0.0.1",
        ERL_EPMD_PORT=str(epmd_port),
        RABBITMQ_MNESIA_BASE=str(workdir / "mnesia"),
        RABBITMQ_LOG_BASE=str(workdir / "log"),
        RABBITMQ_CONFIG_FILE=str(workdir / "rabbitmq.conf"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(workdir / "enabled_plugins"),
        RABBITMQ_PID_FILE=str(workdir / "rabbit.pid"),
    )
    output = open(workdir / "rabbitmq.stdout", "wb")  # noqa: SIM115 - closed below
    # The broker would start epmd with -daemon, which leaves its process
    # group and outlives the test: run it here in the foreground instead.
    epmd = subprocess.Popen(["epmd", "-address", "127.0.0.1", "-port", str(epmd_port)],
                            env=env, stdout=output, stderr=subprocess.STDOUT,
                            start_new_session=True)
    process = subprocess.Popen([SERVER], env=env, cwd=workdir, stdout=output,
                               stderr=subprocess.STDOUT, start_new_session=True)
    server = RabbitServer(port, workdir, process, epmd)
    try:
        wait_until_ready("RabbitMQ", port, process, server.answers_amqp, timeout=START_TIMEOUT,
                         interval=0.5, output=workdir / "rabbitmq.stdout",
                         log_tail=server.log_tail)
        yield server
    finally:
        server.stop()
        output.close()
