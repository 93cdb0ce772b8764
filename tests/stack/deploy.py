"""A real Ironic ``direct`` deploy of a Glance image onto a loop device, for tests.

Ironic's own deploy, nothing faked but the hardware: the conductor downloads
the image from Glance into its cache (``[agent]image_download_source =
local``: the image from Glance, served by the conductor) and serves it over
HTTP from ``[deploy]http_root``; a real ironic-python-agent looks the node up,
runs the deploy steps, downloads the image from that server, checks Glance's
digest and writes it onto the node's root device (``qemu-img convert`` onto
the device, as on hardware). The qcow2 stays qcow2 (``force_raw_images =
false``): the conductor would otherwise write a raw copy of the whole disk.

What keeps this machine safe, since the agent acts on the machine it runs on:

- the node's ``root_device`` hint names the target loop device, and the
  agent gets the test-only hardware manager of ``tests/nova/agent_plugin``
  that answers ``get_os_install_device`` with it (the generic one ignores
  loop devices and would pick this machine's disk);
- ``driver_info/deploy_forces_oob_reboot``: the end of the deploy syncs and
  powers the (fake) node off out of band; in band, the agent would run
  ``poweroff`` on this machine;
- the agent's ``fuser`` (its check that nobody uses the disk) skips the
  ``/proc/1`` it may not read in a sandbox (``agent_bin/fuser``);
- the ``prepare_instance_boot`` step is disabled (priority 0): it only sets
  the boot device to disk, which the fake management interface refuses;
- boot mode ``bios``: for a whole-disk image in UEFI mode Ironic asks the
  agent to install the bootloader, which edits the EFI boot entries of the
  machine the agent runs on.

The agent looks its node up by this machine's only NIC's MAC, and a MAC
belongs to one port: :func:`port_on` moves the port to the node being
deployed for the deploy and back afterwards.

Usage (a module's stacks; see ``tests/lab/test_redeploy.py``)::

    with image_server(tmp / "http") as http, start_glance(tmp / "glance") as glance, \\
            start_ironic(tmp / "ironic", extra_conf=ironic_conf(http, glance.endpoint,
                                                                 tmp / "ironic-cache")) as ironic:
        node = create_available_node(ironic, "target", root_device="/dev/loop9")
        run = deploy(ironic, node, image_id, tmp / "ipa")   # -> node active, image on /dev/loop9
        assert run.node["provision_state"] == "active", run.last_error
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.stack.glance import free_port
from tests.stack.ipa import start_ipa
from tests.stack.ironic import IronicServer, host_mac
from tests.stack.process import stop_process_group, wait_until_ready

__all__ = ["DeployRun", "ImageServer", "LOOP_ROOT_PLUGIN", "create_available_node", "deploy",
           "image_server", "ironic_conf", "port_on"]

#: The test-only agent hardware manager that makes a loop device the root device.
LOOP_ROOT_PLUGIN = Path(__file__).resolve().parents[1] / "nova" / "agent_plugin"

#: Commands put first on the deploying agent's PATH (a ``fuser`` wrapper).
AGENT_BIN = Path(__file__).resolve().parent / "agent_bin"


@dataclasses.dataclass
class ImageServer:
    """A static HTTP server over ``root``, where the conductor puts the images it serves.

    :ivar url: such as ``http://127.0.0.1:41234``.
    """

    root: Path
    url: str


@contextlib.contextmanager
def image_server(workdir: Path) -> Iterator[ImageServer]:
    """Serves ``workdir/root`` over HTTP on a free port of 127.0.0.1 until the end.

    Python's ``http.server``: the agent downloads each image once, with plain GETs.
    """
    root = Path(workdir) / "root"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(Path(workdir) / "http.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root),
         str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return True

        wait_until_ready("image HTTP server", port, process, ready, timeout=30, interval=0.2,
                         output=Path(workdir) / "http.log",
                         transient=(OSError, urllib.error.URLError))
        yield ImageServer(root, f"http://127.0.0.1:{port}")
    finally:
        stop_process_group(process, timeout=10)
        log.close()


def ironic_conf(server: ImageServer, glance_endpoint: str, cache: Path
                ) -> dict[str, dict[str, str]]:
    """Ironic options of a real direct deploy from this Glance, for ``start_ironic(extra_conf=)``.

    :param server: where the conductor publishes the images it caches.
    :param glance_endpoint: a Glance without authentication.
    :param cache: a folder for the conductor's image caches (never /var/lib/ironic).
    """
    return {
        # Keep the qcow2: the agent converts it onto the disk.
        "DEFAULT": {"force_raw_images": "false"},
        # A node goes from manageable to available without an agent.
        "conductor": {"automated_clean": "false"},
        "agent": {"image_download_source": "local"},
        "deploy": {"http_root": str(server.root), "http_url": server.url,
                   "default_boot_mode": "bios"},
        "pxe": {"instance_master_path": str(cache / "master"), "images_path": str(cache / "images"),
                "tftp_master_path": str(cache / "tftp-master"), "tftp_root": str(cache / "tftp")},
        "glance": {"auth_type": "none", "endpoint_override": glance_endpoint},
    }


def create_available_node(ironic: IronicServer, name: str, *, root_device: str) -> str:
    """A fake-hardware node with the direct deploy interface, in ``available``; returns its uuid.

    No port: :func:`deploy` gives it this machine's MAC for the deploy.

    :param root_device: the loop device the image goes to (its ``name`` hint).
    """
    out = ironic.cli(
        "node", "create", "--driver", "fake-hardware", "--name", name,
        "--deploy-interface", "direct",
        "--property", f"root_device={json.dumps({'name': root_device})}",
        "--property", "capabilities=boot_mode:bios",
        # Power off out of band: in band, the agent would power this machine off.
        "--driver-info", "deploy_forces_oob_reboot=true",
        "-f", "json")
    uuid = json.loads(out)["uuid"]
    ironic.cli("node", "manage", uuid, "--wait", "60")
    ironic.cli("node", "provide", uuid, "--wait", "60")
    ironic.wait_for_state(uuid, "available", timeout=60)
    return uuid


@contextlib.contextmanager
def port_on(ironic: IronicServer, node: str, mac: str | None = None) -> Iterator[None]:
    """Moves the port of ``mac`` (this machine's NIC) to ``node`` and back at the end.

    The agent finds its node by that MAC; another node (the one a snapshot was
    taken of) may hold it. A node that held none gets none back.
    """
    mac = mac or host_mac()
    ports = ironic.api("GET", f"/v1/ports?address={mac}&fields=uuid,node_uuid")["ports"]
    owner = ports[0]["node_uuid"] if ports else None
    if owner == node:
        yield
        return
    if ports:
        ironic.cli("port", "delete", ports[0]["uuid"])
    ironic.cli("port", "create", mac, "--node", node)
    try:
        yield
    finally:
        for port in ironic.api("GET", f"/v1/ports?address={mac}&fields=uuid")["ports"]:
            ironic.cli("port", "delete", port["uuid"])
        if owner is not None:
            ironic.cli("port", "create", mac, "--node", owner)


@dataclasses.dataclass
class DeployRun:
    """The outcome of one deploy."""

    node: dict[str, Any]
    agent_log: str
    seconds: float

    @property
    def last_error(self) -> str:
        return self.node.get("last_error") or ""


def deploy(ironic: IronicServer, node: str, image_id: str, workdir: Path, *,
           timeout: float = 600, instance_info: Mapping[str, str] | None = None,
           agent_env: Mapping[str, str] | None = None) -> DeployRun:
    """Deploys Glance image ``image_id`` onto ``node`` (``available``) with ``baremetal node deploy``.

    Without Keystone a Glance image has no owner, and Ironic deploys only
    images its conductor may see: create it ``visibility="community"``.

    Moves this machine's port to the node (:func:`port_on`), sets
    ``instance_info/image_source``, starts a fresh agent once the node waits
    for one (``wait call-back``), waits for ``active`` or ``deploy failed``
    and stops the agent. Leaves a failed node as it is (the caller decides).

    :param instance_info: more ``instance_info`` fields (such as ``root_gb``).
    :param agent_env: more agent environment (``PYTHONPATH`` is extended
        with :data:`LOOP_ROOT_PLUGIN`, not replaced).
    """
    started = time.monotonic()
    info = {"image_source": image_id, **(instance_info or {})}
    args = [arg for key, value in info.items() for arg in ("--instance-info", f"{key}={value}")]
    ironic.cli("node", "set", node, *args)
    env = dict(agent_env or {})
    path = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(LOOP_ROOT_PLUGIN), path) if p)
    # fuser that ignores this sandbox's unreadable pid 1 (see agent_bin/fuser).
    env["PATH"] = os.pathsep.join((str(AGENT_BIN), env.get("PATH", os.environ.get("PATH", ""))))
    with port_on(ironic, node):
        # The fake management interface can only "boot" from PXE: setting the
        # boot device to disk (prepare_instance_boot) would fail the deploy,
        # and there is no boot device to set. Every other step runs.
        skip = [{"interface": "deploy", "step": "prepare_instance_boot", "priority": 0,
                 "args": {}}]
        ironic.cli("node", "deploy", node, "--deploy-steps", json.dumps(skip))
        ironic.wait_for_state(node, "wait call-back", timeout=120, fail_states=("deploy failed",))
        with start_ipa(workdir, ironic.endpoint, env=env) as agent:
            try:
                record = ironic.wait_for_state(node, ("active", "deploy failed"), timeout=timeout)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- agent log ---\n{agent.log_tail()}") from None
            log = agent.log()
    # The agent keeps its download (TMPDIR/<image id>) after writing it: a
    # real ramdisk's memory is gone at reboot, a test run's tmpfs is not.
    Path(tempfile.gettempdir(), image_id).unlink(missing_ok=True)
    return DeployRun(node=record, agent_log=log, seconds=time.monotonic() - started)
