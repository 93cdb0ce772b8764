"""A real Glance API on loopback for tests: gunicorn, sqlite, file store.

Glance 33 no longer runs standalone (``glance-api``), so this runs
``gunicorn glance.wsgi.api:application`` with ``OS_GLANCE_CONFIG_DIR`` pointing
at a generated ``glance-api.conf`` (see /work/shared/NOTES.md). Everything
lives in one work directory; the port is picked free on 127.0.0.1, never 9292,
because other test stacks may run at the same time.

Usage::

    from tests.stack.glance import start_glance

    with start_glance(tmp_path / "glance") as glance:
        image = glance.create_image("snap")          # queued
        ...                                          # PUT data to glance.endpoint
        assert glance.get_image(image["id"])["status"] == "active"

Without ``flavor`` Glance runs without authentication (it ignores
``X-Auth-Token``). For a Keystone-protected Glance pass ``flavor="keystone"``
and a ``[keystone_authtoken]`` section through ``extra_conf``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from tests.stack.process import read_log_tail, stop_process_group, venv_bin, wait_until_ready, write_conf

__all__ = ["GlanceServer", "start_glance", "free_port"]

#: Seconds to wait for Glance to answer after starting it.
START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GlanceServer:
    """A running Glance API process group and a few REST helpers.

    :ivar endpoint: base URL without ``/v2``, such as ``http://127.0.0.1:41234``.
    :ivar workdir: folder holding the config, the sqlite database, the image
        store (``images/``) and the log (``glance.log``).
    :ivar process: the gunicorn master process (leader of its own process group).
    """

    def __init__(self, endpoint: str, workdir: Path, process: subprocess.Popen,
                 token: str | Callable[[], str] | None):
        self.endpoint = endpoint
        self.workdir = workdir
        self.process = process
        self.log_path = workdir / "glance.log"
        self.store_dir = workdir / "images"
        self._token = token
        #: How start_glance starts the process and waits for it (for restart).
        self._spawn: Callable[[], subprocess.Popen] | None = None
        self._wait_ready: Callable[[], None] | None = None

    # -- REST helpers -----------------------------------------------------------------

    def request(self, method: str, path: str, body: object | None = None, *,
                content_type: str = "application/json", token: str | None = None) -> tuple[int, bytes]:
        """Sends one request to ``endpoint + path``; returns ``(status, body)``.

        HTTP errors are returned, not raised, so tests can check them.
        """
        data = None
        headers = {}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        # A callable renews its token (Keystone's may be short-lived).
        token = token or (self._token() if callable(self._token) else self._token)
        if token:
            headers["X-Auth-Token"] = token
        req = urllib.request.Request(self.endpoint + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def _json(self, method: str, path: str, body: object | None = None, **kwargs) -> dict:
        status, raw = self.request(method, path, body, **kwargs)
        if status >= 400:
            raise RuntimeError(f"Glance answered {status} to {method} {path}: {raw[:500]!r}")
        return json.loads(raw) if raw else {}

    def create_image(self, name: str = "test-image", *, disk_format: str = "qcow2",
                     container_format: str = "bare", **properties: str) -> dict:
        """Creates an image record (status ``queued``) and returns it."""
        body = {"name": name, "disk_format": disk_format, "container_format": container_format}
        body.update(properties)
        return self._json("POST", "/v2/images", body)

    def get_image(self, image_id: str) -> dict:
        """Returns the image record (``status``, ``size``, ``checksum``, ``os_hash_value`` ...)."""
        return self._json("GET", f"/v2/images/{image_id}")

    def delete_image(self, image_id: str) -> None:
        """Deletes an image."""
        self._json("DELETE", f"/v2/images/{image_id}")

    def upload(self, image_id: str, data: bytes) -> int:
        """Uploads ``data`` with a plain PUT; returns the HTTP status (204 when accepted)."""
        status, _ = self.request("PUT", f"/v2/images/{image_id}/file", data,
                                 content_type="application/octet-stream")
        return status

    def download(self, image_id: str) -> bytes:
        """Returns the stored image data."""
        status, raw = self.request("GET", f"/v2/images/{image_id}/file")
        if status != 200:
            raise RuntimeError(f"Glance answered {status} to a download of {image_id}")
        return raw

    # -- process control --------------------------------------------------------------

    def alive(self) -> bool:
        """Whether the gunicorn master still runs."""
        return self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Sends ``sig`` to the whole Glance process group (master and workers).

        SIGKILL drops every connection at once, as a crashed server would.
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stops Glance: SIGTERM to its process group, SIGKILL if it lingers."""
        stop_process_group(self.process, timeout=15, reap_group=True)

    def restart(self) -> None:
        """Starts Glance again (after :meth:`kill`) on the same port, config and data.

        As a service manager restarts a crashed Glance: whatever it was
        doing when it died (an image ``saving``) stays as the database says.
        """
        assert self._spawn is not None and self._wait_ready is not None, "not from start_glance"
        self.kill()
        self.process = self._spawn()
        self._wait_ready()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of Glance's log, for assertion messages."""
        return read_log_tail(self.log_path, lines)


@contextlib.contextmanager
def start_glance(workdir: Path, *, flavor: str = "", token: str | Callable[[], str] | None = None,
                 extra_conf: Mapping[str, Mapping[str, str]] | None = None,
                 port: int | None = None, workers: int = 2) -> Iterator[GlanceServer]:
    """Starts Glance in ``workdir`` and stops it on exit.

    :param workdir: an empty (or missing) folder for config, database, store, log.
    :param flavor: paste flavor: ``""`` for no authentication, ``"keystone"``
        for keystonemiddleware (then give ``[keystone_authtoken]`` in ``extra_conf``).
    :param token: token the REST helpers send as ``X-Auth-Token``, or a
        callable returning it (called for every request).
    :param extra_conf: sections merged over the generated ``glance-api.conf``.
    :param port: port to listen on; a free one by default.
    :param workers: gunicorn (sync) workers. At least 2 lets a status GET be
        answered while an upload occupies a worker.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "staging", "tasks", "conf"):
        (workdir / sub).mkdir(exist_ok=True)
    port = port or free_port()
    # The interpreter running the tests lives in the venv that holds glance.
    paste = venv_bin().parent / "etc" / "glance" / "glance-api-paste.ini"
    if not paste.exists():
        raise RuntimeError(f"{paste} not found: install glance==33.0.0 into the test virtualenv")
    sections: dict[str, dict[str, str]] = {
        "DEFAULT": {
            "enabled_backends": "fs:file",
            "bind_host": "127.0.0.1",
            "bind_port": str(port),
            "log_file": str(workdir / "glance.log"),
            "debug": "false",
            # Keep image data uploads the only slow thing: no image cache.
            "image_cache_dir": str(workdir / "cache"),
        },
        "database": {"connection": f"sqlite:///{workdir / 'glance.sqlite'}"},
        "paste_deploy": {"flavor": flavor, "config_file": str(paste)},
        "glance_store": {"default_backend": "fs"},
        "fs": {"filesystem_store_datadir": str(workdir / "images")},
        "os_glance_staging_store": {"filesystem_store_datadir": str(workdir / "staging")},
        "os_glance_tasks_store": {"filesystem_store_datadir": str(workdir / "tasks")},
        "oslo_policy": {"enforce_new_defaults": "false", "enforce_scope": "false"},
    }
    conf = workdir / "conf" / "glance-api.conf"
    write_conf(conf, sections, extra_conf)

    env = dict(os.environ, OS_GLANCE_CONFIG_DIR=str(workdir / "conf"))
    bin_dir = venv_bin()
    subprocess.run([str(bin_dir / "glance-manage"), "--config-file", str(conf), "db_sync"],
                   check=True, env=env, cwd=workdir, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    stderr_log = open(workdir / "gunicorn.log", "ab")  # noqa: SIM115 - closed by the process end

    def spawn() -> subprocess.Popen:
        return subprocess.Popen(
            [str(bin_dir / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
             # Uploads of big images take longer than gunicorn's default 30 s.
             "--timeout", "3600", "glance.wsgi.api:application"],
            env=env, cwd=workdir, stdout=stderr_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    server = GlanceServer(f"http://127.0.0.1:{port}", workdir, spawn(), token)

    def wait_ready() -> None:
        wait_until_ready("Glance", port, server.process,
                         lambda: server.request("GET", "/v2/images?limit=1")[0] < 500,
                         timeout=START_TIMEOUT, interval=0.3, output=workdir / "gunicorn.log")

    server._spawn, server._wait_ready = spawn, wait_ready
    try:
        wait_ready()
        yield server
    finally:
        server.stop()
        stderr_log.close()
