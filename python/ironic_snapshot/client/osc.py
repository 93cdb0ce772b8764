"""OpenStackClient commands: ``baremetal node snapshot`` and ``baremetal snapshot show``.

Registered in the entry point group ``openstack.baremetal.v1`` (that of
python-ironicclient's plugin), so they appear as ``openstack baremetal node
snapshot`` and, through ironicclient's standalone shell, ``baremetal node
snapshot``. Both talk to the cloud through openstacksdk.

Exit codes: 0 done (or started, with ``--no-wait``; or, for ``show``, a
snapshot that succeeded or still runs), 1 failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from osc_lib import exceptions
from osc_lib.cli import parseractions
from osc_lib.command import command

from ironic_snapshot.client import workflow
from ironic_snapshot.client.errors import SnapshotClientError

LOG = logging.getLogger(__name__)

_RESULT_FIELDS = ("image_id", "image_name", "node_id", "status", "disk_format", "compression",
                  "size", "virtual_size", "sha256", "md5", "capture_seconds",
                  "elapsed_seconds", "glance_endpoint")


def _connection(app: Any) -> Any:
    """The openstacksdk connection of ``openstack`` or of ironicclient's ``baremetal``."""
    manager = app.client_manager
    conn = getattr(manager, "sdk_connection", None)
    if conn is None:
        # ironicclient's standalone shell has a cloud region, not a connection.
        from openstack import connection

        conn = connection.Connection(config=manager.cloud_region)
    return conn


class _ProgressLine:
    """Prints the node's state and the elapsed time on stderr.

    On a terminal one line is rewritten in place; otherwise a line is printed
    when the state changes, so logs of scripts stay short.
    """

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last: tuple[str, str | None, str | None] | None = None

    def __call__(self, progress: workflow.Progress) -> None:
        minutes, seconds = divmod(int(progress.elapsed), 60)
        line = (f"Snapshot of node {progress.node_id}: {progress.phase}, node "
                f"{progress.provision_state or '-'}, image {progress.image_status or '-'}, "
                f"{minutes}:{seconds:02d} elapsed")
        key = (progress.phase, progress.provision_state, progress.image_status)
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        elif key != self.last:
            self.stream.write(line + "\n")
            self.stream.flush()
        self.last = key

    def done(self) -> None:
        if self.tty and self.last is not None:
            self.stream.write("\n")
            self.stream.flush()


class SnapshotBaremetalNode(command.ShowOne):
    """Snapshot a node's disk into a new image, as ``server image create`` does for VMs.

    The instance's OS is asked to shut down, the node boots the agent ramdisk
    (Ironic's service), the agent streams the disk into the image, and the
    node returns to active.
    """

    log = logging.getLogger(__name__ + ".SnapshotBaremetalNode")

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("node", metavar="<node>", nargs="?",
                            help="Name or UUID of the node (or give --server)")
        parser.add_argument("--server", metavar="<server>",
                            help="Snapshot the node hosting this server (name or UUID)")
        parser.add_argument("--name", metavar="<name>", required=True, help="Image name")
        parser.add_argument("--disk-format", choices=workflow.DISK_FORMATS, default="qcow2",
                            help="Image format (default: qcow2)")
        parser.add_argument("--compression", choices=workflow.COMPRESSIONS, default="zstd",
                            help="qcow2 cluster compression (default: zstd; zlib for old "
                                 "qemu)")
        parser.add_argument("--visibility", choices=workflow.VISIBILITIES,
                            help="Image visibility (default: Glance's)")
        parser.add_argument("--property", metavar="<key=value>", dest="properties",
                            action=parseractions.KeyValueAction, default={},
                            help="Image property (repeat for more)")
        parser.add_argument("--device", metavar="<device>",
                            help="Disk to capture, such as /dev/sda (default: the node's "
                                 "root device)")
        parser.add_argument("--glance-endpoint", metavar="<url>",
                            help="Image endpoint the agent uploads to (default: the "
                                 "catalog's)")
        wait = parser.add_mutually_exclusive_group()
        wait.add_argument("--wait", dest="wait", action="store_true", default=True,
                          help="Wait for the snapshot and verify it (default)")
        wait.add_argument("--no-wait", dest="wait", action="store_false",
                          help="Return once servicing started; see 'baremetal snapshot "
                               "show'")
        parser.add_argument("--timeout", metavar="<seconds>", type=int, default=3600,
                            help="Seconds the whole snapshot may take (shutdown, ramdisk "
                                 "boot, capture, checks); also the lifetime of the upload "
                                 "credential. The real limit is its token: minted after "
                                 "the power-off, it lives at most Keystone's [token] "
                                 "expiration (1 h by default), and the agent must start "
                                 "the upload within that: ramdisk boot plus, for qcow2, "
                                 "one read of the whole disk (raw starts at once). The "
                                 "upload may outlast the token: this command then "
                                 "verifies the image itself (default: 3600)")
        parser.add_argument("--shutdown-timeout", metavar="<seconds>", type=int, default=300,
                            help="Seconds the OS gets to power off cleanly (default: 300)")
        parser.add_argument("--no-clean-shutdown", dest="clean_shutdown",
                            action="store_false", default=True,
                            help="Do not ask the OS to shut down: the disk is only "
                                 "crash-consistent")
        parser.add_argument("--compression-level", metavar="<level>", type=int,
                            help="Compression level (default: that of the method)")
        parser.add_argument("--cluster-size", metavar="<size>",
                            help="qcow2 cluster size, a power of two from 64K to 2M "
                                 "(default: the agent's, 64K)")
        parser.add_argument("--memory-limit", metavar="<size>",
                            help="Memory of the capture in the agent (metadata, buffers, "
                                 "compressed data held before it reads the disk a second "
                                 "time), such as 1G, or auto (default: the agent's, auto)")
        parser.add_argument("--threads", metavar="<count>", type=int,
                            help="Compression threads in the agent, 0 for one per core "
                                 "(default: the agent's, 0)")
        parser.add_argument("--keep-failed", action="store_true",
                            help="Keep the image of a failed snapshot")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple]:
        conn = _connection(self.app)
        progress = _ProgressLine()
        step_args = {name: value for name, value in (
            ("compression_level", parsed_args.compression_level),
            ("cluster_size", parsed_args.cluster_size),
            ("memory_limit", parsed_args.memory_limit),
            ("threads", parsed_args.threads)) if value is not None}
        try:
            result = workflow.snapshot_node(
                conn, parsed_args.node, name=parsed_args.name, server=parsed_args.server,
                disk_format=parsed_args.disk_format, compression=parsed_args.compression,
                visibility=parsed_args.visibility, properties=parsed_args.properties,
                wait=parsed_args.wait, timeout=parsed_args.timeout,
                clean_shutdown=parsed_args.clean_shutdown,
                shutdown_timeout=parsed_args.shutdown_timeout,
                keep_failed=parsed_args.keep_failed, device=parsed_args.device,
                glance_endpoint=parsed_args.glance_endpoint, step_args=step_args,
                progress=progress)
        except SnapshotClientError as exc:
            progress.done()
            raise exceptions.CommandError(str(exc)) from exc
        progress.done()
        data = result.as_dict()
        return _RESULT_FIELDS, tuple(data[field] for field in _RESULT_FIELDS)


class ShowBaremetalSnapshot(command.ShowOne):
    """Show the outcome of a node snapshot (for example one started with --no-wait).

    Exits 1 when the snapshot failed. Once it is finished, its upload
    credential is deleted if it still exists.
    """

    log = logging.getLogger(__name__ + ".ShowBaremetalSnapshot")

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("image", metavar="<image>", help="Image id of the snapshot")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple]:
        conn = _connection(self.app)
        try:
            status = workflow.get_snapshot(conn, parsed_args.image)
        except SnapshotClientError as exc:
            raise exceptions.CommandError(str(exc)) from exc
        self._failed = status.state == "failed"
        fields = ["state", "image_id", "node_id", "message", "image_status",
                  "provision_state", "last_error"]
        values = [getattr(status, field) for field in fields]
        if status.result is not None:
            data = status.result.as_dict()
            for field in ("size", "virtual_size", "sha256", "md5", "disk_format",
                          "compression", "capture_seconds"):
                fields.append(field)
                values.append(data[field])
        return tuple(fields), tuple(values)

    def run(self, parsed_args: argparse.Namespace) -> int:
        self._failed = False
        code: int = super().run(parsed_args)
        return 1 if self._failed and code == 0 else code
