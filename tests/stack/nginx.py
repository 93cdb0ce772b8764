"""A real nginx reverse proxy on loopback, in front of a test service.

Clouds put Glance behind a proxy (nginx, haproxy, Apache) that cuts off a
request whose body stays idle too long: nginx's ``client_body_timeout``
(60 s by default) is the time allowed between two reads of the body. This
fixture runs Debian's ``nginx`` with its own config, pid file, logs and
temp folders in one work directory, listening on a free port of 127.0.0.1,
and streams request bodies through unbuffered (``proxy_request_buffering
off``, as in front of an image service) with no size limit.

Usage::

    from tests.stack.nginx import start_nginx

    with start_nginx(tmp_path / "nginx", glance.endpoint, body_timeout=2) as proxy:
        ...                                   # talk to proxy.endpoint
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.stack.glance import free_port
from tests.stack.process import read_log_tail, stop_process_group, wait_until_ready

__all__ = ["NginxProxy", "start_nginx"]

#: Seconds to wait for nginx to answer after starting it.
START_TIMEOUT = 30.0


class NginxProxy:
    """A running nginx and where its logs are.

    :ivar endpoint: base URL of the proxy, such as ``http://127.0.0.1:41234``.
    :ivar workdir: folder holding the config, pid file, logs and temp folders.
    """

    def __init__(self, endpoint: str, workdir: Path, process: subprocess.Popen):
        self.endpoint = endpoint
        self.workdir = workdir
        self.process = process
        self.error_log = workdir / "error.log"
        self.access_log = workdir / "access.log"

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the error and access logs, for assertion messages."""
        return (f"error.log:\n{read_log_tail(self.error_log, lines)}\n"
                f"access.log:\n{read_log_tail(self.access_log, lines)}")


@contextlib.contextmanager
def start_nginx(workdir: Path, upstream: str, *, body_timeout: float) -> Iterator[NginxProxy]:
    """Starts nginx proxying to ``upstream`` (``http://host:port``) and stops it on exit.

    :param workdir: an empty (or missing) folder for config, pid file, logs.
    :param body_timeout: ``client_body_timeout`` in seconds: a request body
        idle that long is cut off with a 408.
    """
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        raise RuntimeError("nginx not found: install the Debian package nginx (tests/apt-packages.txt)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    # As root nginx runs its worker as "nobody", which may not enter the
    # test's private temp folder: keep it root (it only listens on loopback).
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = workdir / "nginx.conf"
    conf.write_text(f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} info;
events {{ worker_connections 64; }}
http {{
    access_log {workdir / "access.log"};
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    client_body_timeout {body_timeout:g}s;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
    }}
}}
""")
    output = open(workdir / "nginx.out", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
                               stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    proxy = NginxProxy(f"http://127.0.0.1:{port}", workdir, process)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(proxy.endpoint + "/", timeout=5):
                return True
        except urllib.error.HTTPError:
            return True  # nginx answered, whatever the upstream said

    try:
        wait_until_ready("nginx", port, process, answers, timeout=START_TIMEOUT, interval=0.2,
                         output=workdir / "nginx.out", log_tail=proxy.log_tail)
        yield proxy
    finally:
        stop_process_group(process, timeout=10, reap_group=True)
        output.close()
