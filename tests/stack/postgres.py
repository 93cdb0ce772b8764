"""A real PostgreSQL server on loopback for tests (Debian's ``postgresql``).

Nova's databases live here rather than in sqlite files: oslo.db opens every
sqlite transaction with a deferred ``BEGIN``, so a transaction that reads
and then writes cannot wait for a lock another process holds (sqlite
refuses at once, as that wait could deadlock), and nova-api,
nova-conductor and nova-scheduler write the same cell database. Neither a
busy timeout nor WAL mode helps with that; under load it gave "database is
locked" in the conductor, and a lost instance fault.

The server runs as a plain process of the ``postgres`` system user (it
refuses root) with its own data folder, socket folder and a free port on
127.0.0.1, so it neither needs nor touches a system cluster.

Usage::

    with start_postgres(Path(tempfile.mkdtemp())) as pg:
        url = pg.create_database("nova_api")
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.stack.glance import free_port
from tests.stack.process import read_log_tail, stop_process_group, wait_until_ready

__all__ = ["PostgresServer", "start_postgres"]

#: Debian's binaries of the packaged major version.
BIN = Path("/usr/lib/postgresql/15/bin")
#: The system user the server runs as.
USER = "postgres"
#: Seconds to wait for the server to accept connections.
START_TIMEOUT = 120.0


class PostgresServer:
    """A running server.

    :ivar port: its TCP port on 127.0.0.1.
    :ivar user: the superuser the tests' services connect as.
    """

    def __init__(self, port: int, workdir: Path, process: subprocess.Popen, password: str):
        self.port = port
        self.workdir = workdir
        self.process = process
        self.user = "stack"
        self._password = password

    def _env(self) -> dict[str, str]:
        return dict(os.environ, PGPASSWORD=self._password, PGHOST="127.0.0.1",
                    PGPORT=str(self.port), PGUSER=self.user)

    def answers(self) -> bool:
        """Whether the server accepts connections (``pg_isready``)."""
        return subprocess.run([str(BIN / "pg_isready"), "-q", "-d", "postgres"],
                              env=self._env(), timeout=10).returncode == 0

    def create_database(self, name: str) -> str:
        """Creates database ``name``; returns its SQLAlchemy URL (psycopg2 driver)."""
        subprocess.run([str(BIN / "createdb"), name], env=self._env(), check=True,
                       capture_output=True, timeout=60)
        return (f"postgresql+psycopg2://{self.user}:{self._password}@127.0.0.1:{self.port}/"
                f"{name}")

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for error messages."""
        return read_log_tail(self.workdir / "postgres.log", lines)

    def stop(self) -> None:
        """Stops the server (SIGTERM: a "smart" shutdown; SIGKILL if it lingers)."""
        stop_process_group(self.process, timeout=30)


def _traversable_by(path: Path, uid: int) -> bool:
    """Whether every folder above ``path`` lets user ``uid`` through."""
    for folder in path.resolve().parents:
        mode = folder.stat()
        if mode.st_uid != uid and not mode.st_mode & 0o001:
            return False
    return True


@contextlib.contextmanager
def start_postgres(workdir: Path) -> Iterator[PostgresServer]:
    """Starts a server in ``workdir`` on a free port of 127.0.0.1; stops it on exit.

    ``workdir`` must be reachable by the ``postgres`` user (the tests'
    scratch tmpfs is; pytest's own ``tmp_path`` folders are not).
    """
    if not (BIN / "postgres").exists() or shutil.which("setpriv") is None:
        raise RuntimeError(f"{BIN / 'postgres'} not found: install Debian's postgresql "
                           "(tests/apt-packages.txt)")
    account = pwd.getpwnam(USER)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not _traversable_by(workdir, account.pw_uid):
        raise RuntimeError(f"{workdir} is not reachable by the {USER} user: give PostgreSQL a "
                           "folder under a world-traversable one (such as the tests' tmpfs "
                           "of tests/run.sh)")
    os.chown(workdir, account.pw_uid, account.pw_gid)
    data = workdir / "data"
    password = secrets.token_hex(16)
    pwfile = workdir / "pwfile"
    pwfile.write_text(password + "\n")
    os.chown(pwfile, account.pw_uid, account.pw_gid)
    pwfile.chmod(0o600)
    # setpriv execs the server (no PAM session, no parent left in between).
    as_postgres = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                   "--init-groups"]
    # Password logins only, from loopback only; fsync off: a test cluster
    # in a tmpfs has nothing to keep across a crash.
    subprocess.run(as_postgres + [str(BIN / "initdb"), "-D", str(data), "-U", "stack",
                                  "--pwfile", str(pwfile), "--auth=scram-sha-256",
                                  "--no-sync", "-E", "UTF8", "--locale=C"],
                   check=True, capture_output=True, timeout=120)
    pwfile.unlink()
    port = free_port()
    output = open(workdir / "postgres.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        as_postgres + [str(BIN / "postgres"), "-D", str(data), "-p", str(port),
                       "-c", "listen_addresses=127.0.0.1",
                       "-c", f"unix_socket_directories={workdir}",
                       "-c", "fsync=off", "-c", "synchronous_commit=off",
                       "-c", "full_page_writes=off", "-c", "max_connections=200"],
        stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    server = PostgresServer(port, workdir, process, password)
    try:
        wait_until_ready("PostgreSQL", port, process, server.answers, timeout=START_TIMEOUT,
                         interval=0.3, output=workdir / "postgres.log",
                         log_tail=server.log_tail)
        yield server
    finally:
        server.stop()
        output.close()
