"""A real Keystone on loopback for tests: gunicorn, sqlite, fernet tokens.

``keystone-manage db_sync``, ``fernet_setup``, ``credential_setup`` and
``bootstrap`` run against a generated ``keystone.conf`` in one work directory;
then ``gunicorn keystone.wsgi.api:application`` serves the identity API on a
free port of 127.0.0.1 (never 5000: other test stacks may run at the same time).

Bootstrap leaves an ``admin`` user with the ``admin`` role on project
``admin`` and on the system, region ``RegionOne``, the roles
``admin`` > ``member`` > ``reader`` (implied) and the identity endpoint.
Helpers create the ``service`` project, service users for the other services
(their ``[keystone_authtoken]`` sections come from :meth:`KeystoneServer.authtoken_conf`),
catalog entries, projects and users.

Usage::

    with start_keystone(tmp_path / "keystone") as keystone:
        project = keystone.create_project("demo")
        keystone.create_user("alice", "secret", project=project, role="member")
        token = keystone.password_token("alice", "secret", project="demo")
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.stack.glance import free_port
from tests.stack.process import read_log_tail, stop_process_group, venv_bin, wait_until_ready, write_conf

__all__ = ["KeystoneServer", "start_keystone"]

#: Seconds to wait for Keystone to answer after starting it.
START_TIMEOUT = 60.0

#: Region every catalog entry of the test stack lives in.
REGION = "RegionOne"


class KeystoneError(RuntimeError):
    """Keystone answered an unexpected HTTP status.

    :ivar status: the HTTP status code.
    """

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class KeystoneServer:
    """A running Keystone and REST helpers for the identity API v3.

    :ivar endpoint: base URL, such as ``http://127.0.0.1:41234`` (add ``/v3``).
    :ivar auth_url: ``endpoint + "/v3"``, what ``OS_AUTH_URL`` should hold.
    :ivar admin_password: password of the bootstrap ``admin`` user.
    :ivar workdir: folder holding config, keys, sqlite database and logs.
    """

    def __init__(self, endpoint: str, workdir: Path, process: subprocess.Popen, admin_password: str,
                 token_life: float = 3600.0):
        self.endpoint = endpoint
        self.auth_url = endpoint + "/v3"
        self.workdir = workdir
        self.process = process
        self.admin_password = admin_password
        self.log_path = workdir / "keystone.log"
        #: Seconds a token lives (``[token] expiration``).
        self.token_life = token_life
        self._admin_tokens: dict[str, tuple[str, float]] = {}
        #: Passwords of the service users made by :meth:`service_user`.
        self.service_passwords: dict[str, str] = {}

    # -- raw requests -------------------------------------------------------------------

    def request(self, method: str, path: str, body: object | None = None, *,
                token: str | None = None, headers: Mapping[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        """One request to ``endpoint + path``; returns ``(status, headers, body)``.

        HTTP errors are returned, not raised, so tests can check them.
        """
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            all_headers["X-Auth-Token"] = token
        all_headers.update(headers or {})
        req = urllib.request.Request(self.endpoint + path, data=data, method=method,
                                     headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def api(self, method: str, path: str, body: object | None = None, *,
            token: str | None = None) -> Any:
        """One request as the admin (or with ``token``); returns the JSON body.

        :raises KeystoneError: on an HTTP error status.
        """
        status, _, raw = self.request(method, path, body, token=token or self.admin_token())
        if status >= 400:
            raise KeystoneError(f"Keystone answered {status} to {method} {path}: {raw[:500]!r}",
                                status)
        return json.loads(raw) if raw else None

    # -- tokens -------------------------------------------------------------------------

    def _issue(self, identity: dict[str, Any], scope: dict[str, Any] | None) -> str:
        auth: dict[str, Any] = {"identity": identity}
        if scope is not None:
            auth["scope"] = scope
        status, headers, raw = self.request("POST", "/v3/auth/tokens", {"auth": auth})
        if status != 201:
            raise KeystoneError(f"Keystone refused a token ({status}): {raw[:300]!r}", status)
        return headers["X-Subject-Token"]

    def password_token(self, user: str, password: str, *, project: str | None = None,
                       system: bool = False) -> str:
        """A token for a user of domain Default, scoped to a project (by name) or the system."""
        scope: dict[str, Any] | None = None
        if project is not None:
            scope = {"project": {"name": project, "domain": {"id": "default"}}}
        elif system:
            scope = {"system": {"all": True}}
        return self._issue({"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}}, scope)

    def app_credential_token(self, credential_id: str, secret: str) -> str:
        """A token from an application credential (its id and secret)."""
        return self._issue({"methods": ["application_credential"], "application_credential": {
            "id": credential_id, "secret": secret}}, None)

    def _renewed(self, key: str, mint: Any) -> str:
        # Renewed at half its life: a Keystone with short-lived tokens (the
        # token expiry tests) must not make the helpers fail.
        now = time.monotonic()
        cached = self._admin_tokens.get(key)
        if cached is None or cached[1] < now:
            cached = (mint(), now + self.token_life / 2)
            self._admin_tokens[key] = cached
        return cached[0]

    def admin_token(self) -> str:
        """A system-scoped token of the bootstrap admin, renewed before it expires."""
        return self._renewed("system", lambda: self.password_token(
            "admin", self.admin_password, system=True))

    def admin_project_token(self) -> str:
        """A token of the bootstrap admin scoped to project ``admin``, renewed before it expires."""
        return self._renewed("project", lambda: self.password_token(
            "admin", self.admin_password, project="admin"))

    def validate(self, token: str) -> int:
        """Keystone's HTTP status validating ``token`` (200 valid, 404 not)."""
        admin = self.admin_token()
        status, _, _ = self.request("GET", "/v3/auth/tokens", token=admin,
                                    headers={"X-Subject-Token": token})
        return status

    # -- resources ----------------------------------------------------------------------

    def project_id(self, name: str) -> str:
        """Id of the project ``name`` of domain Default."""
        found = self.api("GET", f"/v3/projects?name={name}&domain_id=default")["projects"]
        if not found:
            raise KeystoneError(f"No project {name}", 404)
        return found[0]["id"]

    def role_id(self, name: str) -> str:
        """Id of the role ``name``."""
        return self.api("GET", f"/v3/roles?name={name}")["roles"][0]["id"]

    def create_project(self, name: str) -> str:
        """Creates a project in domain Default; returns its id."""
        return self.api("POST", "/v3/projects", {"project": {
            "name": name, "domain_id": "default"}})["project"]["id"]

    def create_user(self, name: str, password: str, *, project: str, role: str = "member") -> str:
        """Creates a user in domain Default with ``role`` on ``project`` (an id); returns its id."""
        user = self.api("POST", "/v3/users", {"user": {
            "name": name, "password": password, "domain_id": "default",
            "default_project_id": project}})["user"]["id"]
        self.api("PUT", f"/v3/projects/{project}/users/{user}/roles/{self.role_id(role)}")
        return user

    def service_user(self, name: str) -> str:
        """Creates user ``name`` with ``admin`` and ``service`` roles on project ``service``.

        :returns: the user's password (also kept in :attr:`service_passwords`).
        """
        try:
            service_project = self.project_id("service")
        except KeystoneError:
            service_project = self.create_project("service")
        try:
            self.role_id("service")
        except IndexError:
            self.api("POST", "/v3/roles", {"role": {"name": "service"}})
        password = secrets.token_hex(16)
        user = self.create_user(name, password, project=service_project, role="admin")
        self.api("PUT", f"/v3/projects/{service_project}/users/{user}/roles/"
                        f"{self.role_id('service')}")
        self.service_passwords[name] = password
        return password

    def authtoken_conf(self, user: str, *, service_type: str | None = None,
                       **extra: str) -> dict[str, str]:
        """A ``[keystone_authtoken]`` section for service user ``user`` (made first).

        :param service_type: the catalog type of the protected service;
            keystonemiddleware needs it to enforce application credential
            access rules.
        """
        password = self.service_passwords.get(user) or self.service_user(user)
        section = {
            "www_authenticate_uri": self.endpoint,
            "auth_url": self.endpoint,
            "auth_type": "password",
            "username": user,
            "password": password,
            "project_name": "service",
            "user_domain_id": "default",
            "project_domain_id": "default",
            "region_name": REGION,
        }
        if service_type:
            section["service_type"] = service_type
        section.update(extra)
        return section

    def register_service(self, service_type: str, name: str, url: str) -> str:
        """Adds a service with public and internal endpoints at ``url``; returns its id."""
        service = self.api("POST", "/v3/services", {"service": {
            "type": service_type, "name": name, "enabled": True}})["service"]["id"]
        for interface in ("public", "internal"):
            self.api("POST", "/v3/endpoints", {"endpoint": {
                "service_id": service, "interface": interface, "url": url,
                "region_id": REGION, "enabled": True}})
        return service

    def application_credentials(self, user_id: str, token: str | None = None) -> list[dict]:
        """The application credentials of a user (as admin, or with ``token``)."""
        return self.api("GET", f"/v3/users/{user_id}/application_credentials",
                        token=token)["application_credentials"]

    def env(self, user: str, password: str, *, project: str | None = None,
            system: bool = False) -> dict[str, str]:
        """``OS_*`` variables for a client acting as ``user`` (other ``OS_*`` dropped)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(OS_AUTH_TYPE="password", OS_AUTH_URL=self.auth_url, OS_USERNAME=user,
                   OS_PASSWORD=password, OS_USER_DOMAIN_ID="default",
                   OS_REGION_NAME=REGION, OS_INTERFACE="public", OS_IDENTITY_API_VERSION="3")
        if project is not None:
            env.update(OS_PROJECT_NAME=project, OS_PROJECT_DOMAIN_ID="default")
        elif system:
            env.update(OS_SYSTEM_SCOPE="all")
        return env

    # -- process control ----------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of Keystone's log, for assertion messages."""
        return read_log_tail(self.log_path, lines)

    def stop(self) -> None:
        """Stops Keystone: SIGTERM to its process group, SIGKILL if it lingers."""
        stop_process_group(self.process, timeout=15, reap_group=True)


@contextlib.contextmanager
def start_keystone(workdir: Path, *, port: int | None = None, workers: int = 2,
                   extra_conf: Mapping[str, Mapping[str, str]] | None = None
                   ) -> Iterator[KeystoneServer]:
    """Starts Keystone in ``workdir`` and stops it on exit.

    :param workdir: an empty (or missing) folder for config, keys, database, logs.
    :param port: port to listen on; a free one by default.
    :param workers: gunicorn workers; more than one, because Glance and Ironic
        validate tokens with Keystone while a client waits on it.
    :param extra_conf: sections merged over the generated ``keystone.conf``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    conf_dir = workdir / "conf"
    conf_dir.mkdir(exist_ok=True)
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    sections: dict[str, dict[str, str]] = {
        "DEFAULT": {"log_file": str(workdir / "keystone.log"), "debug": "false"},
        "database": {"connection": f"sqlite:///{workdir / 'keystone.sqlite'}"},
        "token": {"provider": "fernet", "expiration": "3600"},
        "fernet_tokens": {"key_repository": str(workdir / "fernet-keys")},
        "fernet_receipts": {"key_repository": str(workdir / "fernet-receipts")},
        "credential": {"key_repository": str(workdir / "credential-keys")},
        # Several gunicorn workers: a cache per process would serve stale
        # answers (a deleted application credential) from another worker.
        "cache": {"enabled": "false"},
    }
    conf = conf_dir / "keystone.conf"
    write_conf(conf, sections, extra_conf)

    manage = [str(venv_bin() / "keystone-manage"), "--config-file", str(conf)]
    password = secrets.token_hex(16)
    def manage_all(*commands: list[str]) -> None:
        # Started together: each is a Python process that spends most of its
        # seconds importing Keystone, and none needs another's result.
        running = [(args[0], subprocess.Popen(manage + args, cwd=workdir, text=True,
                                              stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE))
                   for args in commands]
        failed = []
        for name, process in running:
            _, stderr = process.communicate(timeout=300)
            if process.returncode != 0:
                failed.append(f"keystone-manage {name} failed: {stderr[-2000:]}")
        if failed:
            raise RuntimeError("\n".join(failed))

    # The key repositories do not touch the database: made while it syncs.
    manage_all(["db_sync"],
               ["fernet_setup", "--keystone-user", "root", "--keystone-group", "root"],
               ["receipt_setup", "--keystone-user", "root", "--keystone-group", "root"],
               ["credential_setup", "--keystone-user", "root", "--keystone-group", "root"])
    manage_all(["bootstrap", f"--bootstrap-password={password}",
                "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
                "--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone",
                "--bootstrap-region-id", REGION, "--bootstrap-admin-url", endpoint,
                "--bootstrap-public-url", endpoint, "--bootstrap-internal-url", endpoint])

    env = dict(os.environ, OS_KEYSTONE_CONFIG_DIR=str(conf_dir))
    # Keystone parses sys.argv with oslo.config and refuses gunicorn's own
    # arguments: load the application through a shim that hides them.
    (workdir / "keystone_wsgi_shim.py").write_text(
        "import sys\nsys.argv = sys.argv[:1]\nfrom keystone.wsgi.api import application  # noqa\n")
    output = open(workdir / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(venv_bin() / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
         "--timeout", "300", "--chdir", str(workdir), "keystone_wsgi_shim:application"],
        env=env, cwd=workdir, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    token_life = float({**sections, **(extra_conf or {})}.get("token", {}).get(
        "expiration", sections["token"]["expiration"]))
    server = KeystoneServer(endpoint, workdir, process, password, token_life)
    try:
        wait_until_ready("Keystone", port, process, lambda: server.request("GET", "/v3")[0] == 200,
                         timeout=START_TIMEOUT, interval=0.3, output=workdir / "gunicorn.log",
                         log_tail=server.log_tail)
        yield server
    finally:
        server.stop()
        output.close()
