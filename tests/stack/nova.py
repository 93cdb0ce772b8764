"""A real Nova 34 cloud on loopback for tests, with this project's compute driver.

Started once per test session (about 1.6 GiB of memory in all):

- RabbitMQ (``tests.stack.rabbitmq``) and PostgreSQL (``tests.stack.postgres``)
  for Nova's databases, Keystone (one worker: sqlite),
  Glance and Ironic behind keystonemiddleware (``tests.stack``);
- Placement 16 and nova-api under gunicorn, nova-conductor, nova-scheduler
  and nova-compute with ``compute_driver = ironic_snapshot.IronicDriver``,
  all from the separate virtualenv ``.venv-nova`` (Nova's requirements do not
  fit the test venv's Ironic), into which this package is installed as a
  built wheel, not editable, so that the shim ``nova/virt/ironic_snapshot``
  is what an operator's installation holds;
- a network stand-in registered as ``network`` that answers every list with
  an empty one (Nova's API needs a network endpoint; ``--nic none`` servers
  need nothing else).

See /work/shared/NOTES.md, "Nova on loopback", for why each option is there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.stack.glance import GlanceServer, free_port
from tests.stack.ironic import IronicServer
from tests.stack.keystone import REGION, KeystoneServer, start_keystone
from tests.stack.postgres import PostgresServer, start_postgres
from tests.stack.protected import keystone_glance, keystone_ironic
from tests.stack.process import read_log_tail, stop_process_group, wait_until_ready, write_conf
from tests.stack.rabbitmq import RabbitServer, start_rabbitmq

__all__ = ["NovaCloud", "nova_venv", "start_nova_cloud"]

REPO = Path(__file__).resolve().parents[2]

#: Pinned packages of the Nova virtualenv (``pip check`` is clean with them);
#: psycopg2 for Nova's databases in PostgreSQL (``tests.stack.postgres``).
NOVA_REQUIREMENTS = ("nova==34.0.0", "openstack-placement==16.0.0", "gunicorn",
                     "psycopg2-binary==2.9.13")

#: Seconds to wait for an API to answer, and for nova-compute to report its node.
START_TIMEOUT = 120.0


def phase(what: str) -> None:
    """Prints a timestamped line about the cloud's start (where its minutes go)."""
    print(f"[nova-cloud {time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def nova_venv() -> Path:
    """The virtualenv holding Nova and Placement (``.venv-nova`` of the checkout).

    Created here when missing (tests/setup.sh creates it on CI).
    """
    venv = Path(os.environ.get("IRONIC_SNAPSHOT_NOVA_VENV", REPO / ".venv-nova"))
    if not list((venv / "lib").glob("python3*/site-packages/psycopg2")):
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *NOVA_REQUIREMENTS],
                       check=True)
    return venv


def install_this_package(venv: Path, workdir: Path) -> None:
    """Builds this checkout's wheel and installs it, not editable, into ``venv``."""
    out = workdir / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    maturin = Path(sys.executable).parent / "maturin"
    subprocess.run([str(maturin), "build", "--release", "--locked", "-q", "-o", str(out)],
                   cwd=REPO, check=True, capture_output=True,
                   env=dict(os.environ, VIRTUAL_ENV=str(Path(sys.executable).parents[1])))
    wheels = sorted(out.glob("*.whl"))
    assert len(wheels) == 1, f"maturin built {wheels}"
    pip = str(venv / "bin" / "pip")
    # The wheel anew (same version as before), then what its [nova] extra
    # and its own dependencies (ironic-python-agent) add to Nova's.
    subprocess.run([pip, "install", "-q", "--no-deps", "--force-reinstall", str(wheels[0])],
                   check=True, capture_output=True)
    subprocess.run([pip, "install", "-q", f"{wheels[0]}[nova]"], check=True,
                   capture_output=True)
    result = subprocess.run([str(venv / "bin" / "pip"), "check"], capture_output=True, text=True)
    assert result.returncode == 0, f"pip check in {venv}: {result.stdout}{result.stderr}"


class _EmptyNetwork(BaseHTTPRequestHandler):
    """Neutron stand-in: a version document, and an empty list for every GET."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass

    def _send(self, status: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("", "/v2.0"):
            host = self.headers.get("Host", "127.0.0.1")
            self._send(200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
                {"rel": "self", "href": f"http://{host}/v2.0/"}]}]})
            return
        resource = path.rsplit("/", 1)[-1].removesuffix(".json").replace("-", "_")
        self._send(200, {resource: []})


@contextlib.contextmanager
def _serving(handler: Any) -> Iterator[str]:
    """Serves ``handler`` on a free port of 127.0.0.1 in a thread; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclasses.dataclass
class NovaCloud:
    """The running cloud.

    :ivar compute_endpoint: nova-api's URL (``/v2.1`` included).
    :ivar workdir: the folder holding every service's config, database and log.
    """

    keystone: KeystoneServer
    glance: GlanceServer
    ironic: IronicServer
    rabbit: RabbitServer
    postgres: PostgresServer
    compute_endpoint: str
    workdir: Path
    venv: Path
    processes: dict[str, subprocess.Popen]
    #: SQLAlchemy URL of the cell database (instances, faults, services).
    cell_database: str
    #: Placement's URL.
    placement_endpoint: str
    #: SQLAlchemy URL of the API database (host mappings, request specs).
    api_database: str

    def nova_log(self, service: str, lines: int = 60) -> str:
        """The tail of ``nova-<service>.log`` (api, conductor, scheduler, compute)."""
        return read_log_tail(self.workdir / "nova" / f"nova-{service}.log", lines)

    def nova_logs(self) -> str:
        """Every Nova log and Ironic's, whole (to look for secrets)."""
        texts = [path.read_text(errors="replace")
                 for path in sorted((self.workdir / "nova").glob("*.log"))]
        return "\n".join(texts)

    def manage(self, *args: str) -> str:
        """Runs ``nova-manage ARGS`` with the controller's config; returns stdout."""
        return _run([str(self.venv / "bin" / "nova-manage"), "--config-file",
                     str(self.workdir / "nova" / "nova.conf"), *args], self.workdir / "nova")

    def discover_hosts(self) -> None:
        """Maps nova-compute's host to cell1 (once it reported a node)."""
        self.manage("cell_v2", "discover_hosts")

    def cell_query(self, sql: str, **params: str) -> list[list[Any]]:
        """Rows of ``sql`` (``:name`` parameters) in the cell database."""
        return self.query(self.cell_database, sql, **params)

    def query(self, database: str, sql: str, **params: str) -> list[list[Any]]:
        """Rows of ``sql`` (``:name`` parameters) in ``database`` (a SQLAlchemy URL).

        Run by the Nova venv's Python, which has the database driver.
        """
        script = ("import json, sys, sqlalchemy\n"
                  "engine = sqlalchemy.create_engine(sys.argv[1])\n"
                  "with engine.connect() as db:\n"
                  "    rows = db.execute(sqlalchemy.text(sys.argv[2]), json.loads(sys.argv[3]))\n"
                  "    print(json.dumps([list(row) for row in rows], default=str))\n")
        out = _run([str(self.venv / "bin" / "python"), "-c", script, database, sql,
                    json.dumps(params)], self.workdir)
        rows: list[list[Any]] = json.loads(out)
        return rows

    def alive(self) -> dict[str, bool]:
        """Which Nova and Placement processes still run."""
        return {name: process.poll() is None for name, process in self.processes.items()}


def _nova_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of Nova's processes: without the tests' ``PYTHONPATH``.

    The tests put the checkout's ``python/`` first on ``PYTHONPATH``; Nova must
    run the package installed in its venv, as an operator's would.
    """
    result = dict(os.environ if env is None else env)
    result.pop("PYTHONPATH", None)
    return result


def _run(args: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600,
                            env=_nova_env(env))
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout)[-3000:]}")
    return result.stdout


def _http_ok(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as err:
        return err.code < 500


def _system_roles(keystone: KeystoneServer, user: str, *roles: str) -> None:
    user_id = keystone.api("GET", f"/v3/users?name={user}")["users"][0]["id"]
    for role in roles:
        keystone.api("PUT", f"/v3/system/users/{user_id}/roles/{keystone.role_id(role)}")


def _password_auth(keystone: KeystoneServer, user: str) -> dict[str, str]:
    """A keystoneauth ``password`` section for service user ``user`` (project service)."""
    return {
        "auth_type": "password",
        "auth_url": keystone.endpoint,
        "username": user,
        "password": keystone.service_passwords.get(user) or keystone.service_user(user),
        "project_name": "service",
        "user_domain_id": "default",
        "project_domain_id": "default",
        "region_name": REGION,
    }


def _together(**calls: Callable[[], Any]) -> dict[str, Any]:
    """Runs the calls in threads at once; returns their results by name.

    Most of the cloud's start is Python processes importing their service and
    waiting on one another's sockets: started side by side they overlap. Every
    call runs to its end; then the first failure is raised.
    """
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
    errors = [future.exception() for future in futures.values() if future.exception()]
    if errors:
        raise errors[0]  # type: ignore[misc]
    return {name: future.result() for name, future in futures.items()}


def _enter_together(stack: contextlib.ExitStack,
                    **managers: contextlib.AbstractContextManager[Any]) -> dict[str, Any]:
    """Enters the context managers at once (in threads); ``stack`` exits them.

    Those entered are on ``stack`` even when another one failed, so that a
    failed start leaves nothing running.
    """
    with ThreadPoolExecutor(max_workers=len(managers)) as pool:
        futures = {name: pool.submit(manager.__enter__) for name, manager in managers.items()}
    results, errors = {}, []
    for name, future in futures.items():
        if future.exception() is None:
            results[name] = future.result()
            stack.push(managers[name].__exit__)
        else:
            errors.append(future.exception())
    if errors:
        raise errors[0]  # type: ignore[misc]
    return results


class _ImageHTTPHandler(SimpleHTTPRequestHandler):
    """Serves Ironic's ``[deploy] http_root`` (the images a direct deploy writes)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass


@contextlib.contextmanager
def _image_http_server(root: Path) -> Iterator[str]:
    """Ironic's image server: the agent of a direct deploy downloads from it.

    The conductor converts the Glance image to raw in its cache and links it
    under ``http_root`` (``[agent] image_download_source = http``); a real
    cloud serves that folder with a web server on the conductor host.
    """
    root.mkdir(parents=True, exist_ok=True)
    with _serving(functools.partial(_ImageHTTPHandler, directory=str(root))) as url:
        yield url


@contextlib.contextmanager
def start_nova_cloud(workdir: Path, *,
                     ironic_conf: Mapping[str, Mapping[str, str]] | None = None,
                     compute_conf: Mapping[str, Mapping[str, str]] | None = None,
                     before_compute: Callable[[IronicServer], None] | None = None
                     ) -> Iterator[NovaCloud]:
    """Starts the whole cloud in ``workdir``; stops everything on exit.

    :param ironic_conf: sections merged over Ironic's generated config.
    :param compute_conf: sections merged over nova-compute's config (such as
        ``[ironic_snapshot]`` options).
    :param before_compute: called with Ironic once it runs, before
        nova-compute starts (while Nova's databases sync), to enroll nodes:
        nova-compute reports the nodes it finds at its start, where a node
        enrolled later waits for its next resource update.
    """
    workdir = Path(workdir)
    venv = nova_venv()
    novadir = workdir / "nova"
    novadir.mkdir(parents=True, exist_ok=True)
    glance_port, ironic_port = free_port(), free_port()
    processes: dict[str, subprocess.Popen] = {}
    outputs = []

    def spawn(name: str, args: list[str], env: Mapping[str, str] | None = None
              ) -> subprocess.Popen:
        output = open(novadir / f"{name}.stdout", "wb")  # noqa: SIM115 - closed below
        outputs.append(output)
        process = subprocess.Popen(args, cwd=novadir, stdout=output, stderr=subprocess.STDOUT,
                                   env=_nova_env(env), start_new_session=True)
        processes[name] = process
        return process

    with contextlib.ExitStack() as stack:
        # -- 1. what needs nothing else, side by side ---------------------------------------
        phase("starting RabbitMQ, PostgreSQL, Keystone; building the wheel")
        started = _enter_together(
            stack,
            rabbit=start_rabbitmq(workdir / "rabbitmq"),
            # In a folder of the scratch space's own (pytest's are closed to
            # the postgres user).
            postgres=start_postgres(
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nova-pg-")))),
            # One worker: two on sqlite gave "database is locked" under Nova's load.
            keystone=start_keystone(
                workdir / "keystone", workers=1,
                # bcrypt's default cost made every password check take seconds
                # on a loaded 2-core machine; the services log in often.
                extra_conf={"identity": {"password_hash_rounds": "4"}}),
            network=_serving(_EmptyNetwork),
            images=_image_http_server(workdir / "ironic-http"),
            wheel=_call_as_context(lambda: install_this_package(venv, workdir)))
        rabbit, postgres, keystone = started["rabbit"], started["postgres"], started["keystone"]
        phase("RabbitMQ, PostgreSQL, Keystone up; wheel installed")
        keystone.register_service("image", "glance", f"http://127.0.0.1:{glance_port}")
        keystone.register_service("baremetal", "ironic", f"http://127.0.0.1:{ironic_port}")
        keystone.register_service("network", "neutron", started["network"])
        for user in ("nova", "placement", "glance", "ironic"):
            keystone.service_user(user)
        # Nova's service user sees and drives every node (system scope).
        _system_roles(keystone, "nova", "service", "reader", "admin")
        phase("Keystone users and catalog done")

        # -- 2. Glance, Ironic, and Placement's and Nova's databases, side by side ----------
        http_root = workdir / "ironic-http"
        ironic_sections: dict[str, dict[str, str]] = {
            # Unshelve deploys the shelved image with the direct interface:
            # the conductor fetches it from Glance (as Ironic's service
            # user), converts it to raw and serves it from http_root.
            "agent": {"image_download_source": "http",
                      "deploy_logs_local_path": str(workdir / "ironic" / "deploy-logs")},
            "deploy": {"http_url": started["images"], "http_root": str(http_root)},
            "pxe": {"images_path": str(workdir / "ironic" / "images"),
                    "instance_master_path": str(workdir / "ironic" / "master_images")},
            "glance": {**_password_auth(keystone, "ironic"),
                       "endpoint_override": f"http://127.0.0.1:{glance_port}"},
            # Shelve-offload unprovisions the node; cleaning it would boot
            # the agent for steps that are not under test.
            "conductor": {"automated_clean": "false"},
        }
        for section, values in (ironic_conf or {}).items():
            ironic_sections.setdefault(section, {}).update(values)

        placedir = workdir / "placement"
        placedir.mkdir(exist_ok=True)
        write_conf(placedir / "placement.conf", {
            "DEFAULT": {"log_file": str(placedir / "placement.log"), "debug": "false"},
            "api": {"auth_strategy": "keystone"},
            "keystone_authtoken": keystone.authtoken_conf("placement", service_type="placement"),
            "placement_database": {"connection": postgres.create_database("placement")},
        })

        common: dict[str, dict[str, str]] = {
            "DEFAULT": {
                "transport_url": rabbit.transport_url,
                "my_ip": "127.0.0.1",
                "host": "nova-test",
                "state_path": str(novadir / "state"),
                "debug": "false",
                "use_stderr": "false",
                # A stopping service waits this long for its work to end
                # (60 s by default): nothing of a test cloud's is worth it.
                "graceful_shutdown_timeout": "5",
            },
            "api": {"auth_strategy": "keystone"},
            "keystone_authtoken": keystone.authtoken_conf("nova", service_type="compute"),
            "placement": _password_auth(keystone, "placement"),
            "neutron": _password_auth(keystone, "nova"),
            "glance": {"region_name": REGION},
            "ironic": {**{key: value for key, value in _password_auth(keystone, "nova").items()
                          if key not in ("project_name", "project_domain_id")},
                       "system_scope": "all"},
            "oslo_concurrency": {"lock_path": str(novadir / "locks")},
            "oslo_messaging_notifications": {"driver": "noop"},
            # The scheduler maps new compute hosts to the cell itself, every
            # 2 s, where each nova-manage discover_hosts is a process start.
            "scheduler": {"discover_hosts_in_cells_interval": "2", "workers": "1"},
            # One process per service: memory on a 2-core test machine.
            "conductor": {"workers": "1"},
        }
        # Nova talks to Placement as its own service user.
        common["placement"].update(username="nova",
                                   password=keystone.service_passwords["nova"])
        # PostgreSQL, not sqlite: see tests.stack.postgres for why.
        cell1_url = postgres.create_database("nova_cell1")
        cell0_url = postgres.create_database("nova_cell0")
        controller = {**common,
                      "api_database": {"connection": postgres.create_database("nova_api")},
                      "database": {"connection": cell1_url}}
        write_conf(novadir / "nova.conf", controller)
        shutil.copy(venv / "etc" / "nova" / "api-paste.ini", novadir / "api-paste.ini")
        manage = [str(venv / "bin" / "nova-manage"), "--config-file", str(novadir / "nova.conf")]

        def nova_databases() -> None:
            _run(manage + ["api_db", "sync"], novadir)
            _run(manage + ["cell_v2", "map_cell0", "--database_connection", cell0_url], novadir)
            _run(manage + ["cell_v2", "create_cell", "--name", "cell1"], novadir)
            # The cell databases (cell1 and the mapped cell0).
            _run(manage + ["db", "sync"], novadir)
            phase("Nova databases synced")

        def placement_database() -> None:
            _run([str(venv / "bin" / "placement-manage"), "--config-file",
                  str(placedir / "placement.conf"), "db", "sync"], placedir)
            phase("Placement database synced")

        def glance_up() -> Any:
            server = stack_glance.__enter__()
            phase("Glance up")
            return server

        def ironic_up() -> Any:
            server = stack_ironic.__enter__()
            phase("Ironic up")
            if before_compute is not None:
                before_compute(server)
                phase("nodes enrolled")
            return server

        stack_glance = keystone_glance(keystone, workdir / "glance", glance_port)
        # Ironic keeps validated tokens (keystonemiddleware's default 300 s):
        # only service and admin tokens reach it here, and without the
        # cache nova-compute's and the driver's polls of the node made every
        # request wait for the one Keystone worker on a loaded machine.
        stack_ironic = keystone_ironic(keystone, workdir / "ironic", ironic_port,
                                       extra_conf=ironic_sections, token_cache_time=300)
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {"glance": pool.submit(glance_up), "ironic": pool.submit(ironic_up),
                       "nova": pool.submit(nova_databases),
                       "placement": pool.submit(placement_database)}
        # Whatever started is stopped on exit, even if another part failed.
        for name, manager in (("glance", stack_glance), ("ironic", stack_ironic)):
            if futures[name].exception() is None:
                stack.push(manager.__exit__)
        for future in futures.values():
            future.result()
        glance, ironic = futures["glance"].result(), futures["ironic"].result()

        # -- 3. Placement and Nova's services ----------------------------------------------
        # Ports are picked right before each server starts: minutes of client
        # connections in between could take a port picked early.
        placement_port = free_port()
        keystone.register_service("placement", "placement", f"http://127.0.0.1:{placement_port}")
        # Like Keystone, Placement and nova-api parse sys.argv with oslo.config
        # and refuse gunicorn's arguments: a shim hides them.
        (placedir / "placement_shim.py").write_text(
            "import sys\nsys.argv = sys.argv[:1]\n"
            "from placement.wsgi.api import application  # noqa\n")
        spawn("placement", [str(venv / "bin" / "gunicorn"), "--bind",
                            f"127.0.0.1:{placement_port}", "--workers", "1", "--timeout", "300",
                            "--chdir", str(placedir), "placement_shim:application"],
              env=dict(os.environ, OS_PLACEMENT_CONFIG_DIR=str(placedir)))

        (novadir / "nova_api_shim.py").write_text(
            "import sys\nsys.argv = sys.argv[:1]\n"
            "from nova.wsgi.osapi_compute import application  # noqa\n")
        api_port = free_port()
        keystone.register_service("compute", "nova", f"http://127.0.0.1:{api_port}/v2.1")
        api_env = dict(os.environ, OS_NOVA_CONFIG_DIR=str(novadir),
                       # The first file is taken as the paste config.
                       OS_NOVA_CONFIG_FILES="api-paste.ini;nova.conf")
        spawn("api", [str(venv / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{api_port}",
                      "--workers", "1", "--timeout", "300", "--chdir", str(novadir),
                      "nova_api_shim:application"], env=api_env)
        for service in ("conductor", "scheduler"):
            spawn(service, [str(venv / "bin" / f"nova-{service}"), "--config-file",
                            str(novadir / "nova.conf"), "--log-file",
                            str(novadir / f"nova-{service}.log")])

        # -- nova-compute: its own config, no database ------------------------------------
        compute: dict[str, dict[str, str]] = {
            **{k: dict(v) for k, v in common.items()},
            "ironic_snapshot": {"auth_url": keystone.endpoint, "poll_interval": "1",
                                "shutdown_timeout": "60"},
        }
        compute["DEFAULT"].update(compute_driver="ironic_snapshot.IronicDriver",
                                  update_resources_interval="15",
                                  reserved_host_memory_mb="0")
        write_conf(novadir / "nova-compute.conf", compute, compute_conf)
        spawn("compute", [str(venv / "bin" / "nova-compute"), "--config-file",
                          str(novadir / "nova-compute.conf"), "--log-file",
                          str(novadir / "nova-compute.log")])

        cloud = NovaCloud(keystone, glance, ironic, rabbit, postgres,
                          f"http://127.0.0.1:{api_port}/v2.1", workdir, venv, processes,
                          cell1_url, f"http://127.0.0.1:{placement_port}",
                          controller["api_database"]["connection"])
        try:
            for name, port, url in (
                    ("placement", placement_port, f"http://127.0.0.1:{placement_port}/"),
                    ("api", api_port, f"http://127.0.0.1:{api_port}/")):
                wait_until_ready(name, port, processes[name], lambda url=url: _http_ok(url),
                                 timeout=START_TIMEOUT, interval=0.5,
                                 output=novadir / f"{name}.stdout")
            phase("Placement and nova-api answer")
            _wait_for_compute_service(cloud)
            phase("nova-compute registered")
            yield cloud
        finally:
            # SIGTERM to all first, then wait: each may take seconds to go.
            for process in processes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
            for process in reversed(list(processes.values())):
                stop_process_group(process, timeout=20, reap_group=True)
            for output in outputs:
                output.close()


@contextlib.contextmanager
def _call_as_context(call: Callable[[], Any]) -> Iterator[Any]:
    """A call as a context manager (to run it beside the servers' starts)."""
    yield call()


def _wait_for_compute_service(cloud: NovaCloud) -> None:
    """Waits until nova-compute registered its service in the cell database.

    Its host is mapped to the cell (``discover_hosts``) only once it reports
    a node: see :meth:`NovaCloud.discover_hosts`.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        for name, alive in cloud.alive().items():
            if not alive:
                raise RuntimeError(f"nova {name} exited at start:\n"
                                   + cloud.nova_log(name, 40)
                                   + (cloud.workdir / "nova" / f"{name}.stdout").read_text(
                                       errors="replace")[-2000:])
        rows = cloud.cell_query("SELECT host FROM services WHERE topic = 'compute' "
                                "AND deleted = 0")
        if rows:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("nova-compute did not register within "
                               f"{START_TIMEOUT:.0f} s:\n{cloud.nova_log('compute')}")
        time.sleep(2)
