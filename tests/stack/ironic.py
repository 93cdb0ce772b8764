"""A real Ironic all-in-one (API + conductor) on loopback for tests.

One ``ironic`` process with sqlite, no authentication, no message bus, the
``fake-hardware`` type (fake power, boot and management: nothing is powered or
booted) and the ``direct`` deploy interface, whose agent steps run in a real
ironic-python-agent process (``tests.stack.ipa``). The API port is picked free
on 127.0.0.1, never 6385, because other test stacks may run at the same time.
See /work/shared/NOTES.md for why each option is there.

Usage::

    with start_ironic(tmp_path / "ironic") as ironic:
        node = ironic.create_active_node("n1", mac=host_mac(), root_device="/dev/loop7")
        ironic.cli("node", "service", node, "--service-steps", json.dumps(steps))
        ironic.wait_for_state(node, "service wait")
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.stack.glance import free_port
from tests.stack.process import read_log_tail, stop_process_group, venv_bin, wait_until_ready, write_conf

__all__ = ["IronicServer", "StateTimeout", "host_mac", "start_ironic"]

#: Seconds to wait for the Ironic API to answer after starting it.
START_TIMEOUT = 90.0

#: Seconds between two agent heartbeats at most (Ironic tells the agent); low
#: so that Ironic notices a finished step within seconds.
HEARTBEAT_TIMEOUT = 10


class StateTimeout(AssertionError):
    """A node did not reach the expected provision state in time."""


def host_mac() -> str:
    """MAC address of a physical-looking NIC of this machine.

    The agent looks its node up by the MAC addresses of the machine it runs
    on, so the node's port must carry one of them.
    """
    for name in sorted(os.listdir("/sys/class/net")):
        base = Path("/sys/class/net") / name
        if name == "lo" or not (base / "address").exists():
            continue
        try:
            if (base / "operstate").read_text().strip() != "up":
                continue
        except OSError:
            continue
        mac = (base / "address").read_text().strip()
        if mac and mac != "00:00:00:00:00:00":
            return mac
    raise RuntimeError("No network interface that is up: the agent cannot look its node up")


class IronicServer:
    """A running Ironic all-in-one and helpers around the ``baremetal`` CLI.

    :ivar endpoint: API base URL, such as ``http://127.0.0.1:41234``.
    :ivar workdir: folder holding config, sqlite database and ``ironic.log``.
    """

    def __init__(self, endpoint: str, workdir: Path, process: subprocess.Popen, *,
                 client_env: Mapping[str, str] | None = None,
                 token: Callable[[], str] | None = None):
        self.endpoint = endpoint
        self.workdir = workdir
        self.process = process
        self.log_path = workdir / "ironic.log"
        self._client_env = dict(client_env) if client_env is not None else None
        self._token = token

    def env(self) -> dict[str, str]:
        """Environment for ``baremetal`` commands talking to this Ironic."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        if self._client_env is not None:
            # Keystone auth: credentials (and the catalog) come from the caller.
            env.update(self._client_env)
            env.setdefault("OS_BAREMETAL_API_VERSION", "latest")
            return env
        env.update(OS_AUTH_TYPE="none", OS_ENDPOINT=self.endpoint, OS_BAREMETAL_API_VERSION="latest")
        return env

    def cli(self, *args: str, check: bool = True) -> str:
        """Runs ``baremetal ARGS``; returns its stdout."""
        result = subprocess.run([str(venv_bin() / "baremetal"), *args], env=self.env(),
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"baremetal {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stderr.strip()[-2000:]}")
        return result.stdout

    def api(self, method: str, path: str, body: object | None = None) -> Any:
        """One request to the Ironic API (latest microversion); returns the JSON body."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "X-OpenStack-Ironic-API-Version": "latest"}
        if self._token is not None:
            headers["X-Auth-Token"] = self._token()
        req = urllib.request.Request(self.endpoint + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def node(self, node: str) -> dict[str, Any]:
        """The node's record from the API."""
        return self.api("GET", f"/v1/nodes/{node}")

    def create_active_node(self, name: str, *, mac: str, root_device: str) -> str:
        """Creates a fake-hardware node, adopts it into ``active`` and returns its uuid.

        :param mac: MAC address of the port (one of this machine's NICs).
        :param root_device: value of the ``name`` root device hint, so the
            agent never picks this machine's own disk.
        """
        out = self.cli("node", "create", "--driver", "fake-hardware", "--name", name,
                       "--deploy-interface", "direct",
                       "--property", f"root_device={json.dumps({'name': root_device})}",
                       "-f", "json")
        uuid = json.loads(out)["uuid"]
        self.cli("port", "create", mac, "--node", uuid)
        self.cli("node", "manage", uuid, "--wait", "60")
        self.cli("node", "adopt", uuid, "--wait", "60")
        self.wait_for_state(uuid, "active", timeout=60)
        return uuid

    def wait_for_state(self, node: str, states: str | tuple[str, ...], *, timeout: float = 120,
                       fail_states: tuple[str, ...] = ()) -> dict[str, Any]:
        """Waits until the node's provision state is one of ``states``; returns the node.

        :raises StateTimeout: on timeout, or at once if a state of
            ``fail_states`` is reached; the message has the node's
            ``last_error`` and the tail of the Ironic log.
        """
        wanted = (states,) if isinstance(states, str) else states
        deadline = time.monotonic() + timeout
        record: dict[str, Any] = {}
        while time.monotonic() < deadline:
            record = self.node(node)
            state = record["provision_state"]
            # Wait and failed states keep a target (where they go next);
            # "active" counts only once the target is cleared.
            if state in wanted and (state != "active" or not record.get("target_provision_state")):
                return record
            if state in fail_states:
                break
            time.sleep(0.5)
        raise StateTimeout(
            f"Node {node} is {record.get('provision_state')} (target "
            f"{record.get('target_provision_state')}), not {' or '.join(wanted)}; last_error: "
            f"{record.get('last_error')}\n--- ironic log ---\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of Ironic's log, for assertion messages."""
        # API access lines (one per poll) would hide everything else.
        return read_log_tail(self.log_path, lines, keep=lambda line: " ironic.api [" not in line)

    def stop(self) -> None:
        """Stops Ironic: SIGTERM to its process group, SIGKILL if it lingers."""
        stop_process_group(self.process, timeout=20)


@contextlib.contextmanager
def start_ironic(workdir: Path, *, port: int | None = None,
                 extra_conf: Mapping[str, Mapping[str, str]] | None = None,
                 client_env: Mapping[str, str] | None = None,
                 token: Callable[[], str] | None = None) -> Iterator[IronicServer]:
    """Starts Ironic all-in-one in ``workdir`` and stops it on exit.

    :param workdir: an empty (or missing) folder for config, database and log.
    :param port: API port; a free one by default.
    :param extra_conf: sections merged over the generated ``ironic.conf``,
        such as ``auth_strategy = keystone`` and ``[keystone_authtoken]``.
    :param client_env: ``OS_*`` variables of the ``baremetal`` commands
        instead of the no-auth ones (for a Keystone-protected Ironic).
    :param token: returns the token the REST helpers send (Keystone auth).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    conf = workdir / "ironic.conf"
    sections: dict[str, dict[str, str]] = {
        "DEFAULT": {
            "auth_strategy": "noauth",
            "rpc_transport": "none",
            "host": "ironic-snapshot-test",
            "enabled_hardware_types": "fake-hardware",
            "enabled_deploy_interfaces": "direct,fake",
            "default_deploy_interface": "direct",
            "enabled_boot_interfaces": "fake",
            "enabled_power_interfaces": "fake",
            "enabled_management_interfaces": "fake",
            "enabled_network_interfaces": "noop",
            # The default vendor interfaces need ipmitool installed.
            "enabled_vendor_interfaces": "fake,no-vendor",
            "default_network_interface": "noop",
            "log_file": str(workdir / "ironic.log"),
            "debug": "false",
            "state_path": str(workdir / "state"),
        },
        "api": {"host_ip": "127.0.0.1", "port": str(port),
                "ramdisk_heartbeat_timeout": str(HEARTBEAT_TIMEOUT)},
        "conductor": {
            # Timeouts are checked every few seconds so a dead agent fails fast.
            "check_provision_state_interval": "5",
            "service_callback_timeout": "120",
            "sync_power_state_interval": "-1",
        },
        "dhcp": {"dhcp_provider": "none"},
        "database": {"connection": f"sqlite:///{workdir / 'ironic.sqlite'}"},
        "agent": {"require_tls": "false", "command_timeout": "60",
                  "post_deploy_get_power_state_retries": "1"},
        "service_catalog": {"endpoint_override": endpoint, "auth_type": "none"},
        "oslo_concurrency": {"lock_path": str(workdir / "locks")},
    }
    write_conf(conf, sections, extra_conf)
    bin_dir = venv_bin()
    subprocess.run([str(bin_dir / "ironic-dbsync"), "--config-file", str(conf), "create_schema"],
                   check=True, cwd=workdir, capture_output=True)
    output = open(workdir / "ironic.stdout", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([str(bin_dir / "ironic"), "--config-file", str(conf)],
                               cwd=workdir, stdout=output, stderr=subprocess.STDOUT,
                               start_new_session=True)
    server = IronicServer(endpoint, workdir, process, client_env=client_env, token=token)
    try:
        def conductor_ready() -> bool:
            # The conductor registers itself after the API answers: wait
            # for the driver list, which needs a live conductor.
            drivers = server.api("GET", "/v1/drivers")
            return any(d["name"] == "fake-hardware" for d in drivers.get("drivers", []))

        wait_until_ready(
            "Ironic", port, process, conductor_ready, timeout=START_TIMEOUT, interval=0.5,
            output=workdir / "ironic.stdout", output_chars=3000,
            transient=(OSError, ValueError, urllib.error.URLError),
            # The service manager restarts a crashing conductor forever:
            # report its traceback instead of waiting for the timeout.
            failing=lambda: server.log_tail(200).count("exited with status 1") >= 3,
            log_tail=server.log_tail)
        yield server
    finally:
        server.stop()
        output.close()
