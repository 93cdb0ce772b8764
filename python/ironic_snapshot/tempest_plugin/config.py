"""Tempest options of the ironic-snapshot plugin.

``[service_available] ironic_snapshot`` switches the plugin on; the group
``[baremetal_snapshot]`` says which node the scenarios may snapshot and how
the agent reaches Glance. The DevStack plugin writes these in its
``test-config`` phase (see ``devstack/plugin.sh``).
"""

from __future__ import annotations

from oslo_config import cfg

__all__ = ["service_available_option", "snapshot_group", "snapshot_options"]

#: Whether the ``snapshot_disk`` step is in the agent ramdisk of this cloud.
service_available_option = cfg.BoolOpt(
    "ironic_snapshot",
    default=False,
    help="Whether the agent ramdisk of this cloud has ironic-snapshot's "
         "hardware manager, so that the snapshot_disk service step exists.")

#: The plugin's own group.
snapshot_group = cfg.OptGroup(
    name="baremetal_snapshot",
    title="ironic-snapshot scenario options")

#: Options of :data:`snapshot_group`.
snapshot_options = [
    cfg.StrOpt(
        "node",
        default="",
        help="Name or UUID of an active node the scenarios may snapshot: it "
             "is serviced (powered off, booted into the agent ramdisk, its "
             "disk read) and brought back to active. Empty: every scenario "
             "is skipped."),
    cfg.StrOpt(
        "glance_endpoint",
        default="",
        help="Glance endpoint the agent in the ramdisk uploads to. Empty: "
             "the image endpoint of the catalog."),
    cfg.DictOpt(
        "step_args",
        default={},
        help="More arguments of the snapshot_disk step in every scenario, "
             "as key:value pairs, such as device:/dev/sdb or "
             "memory_limit:512M."),
    cfg.StrOpt(
        "runbook",
        default="",
        help="Name of a runbook holding the snapshot_disk step without "
             "per-run values (the agent's [snapshot] credential creates "
             "the image), approved for the node. Empty: the runbook "
             "scenario is skipped."),
    cfg.BoolOpt(
        "client_workflow",
        default=True,
        help="Run the scenario of the client workflow (`baremetal node "
             "snapshot`): it makes the node's owner the test project for "
             "its duration, and mints and deletes a scoped upload "
             "credential."),
    cfg.StrOpt(
        "server",
        default="",
        help="Name or UUID of an ACTIVE bare-metal server of the Nova "
             "cloud whose compute driver is ironic-snapshot's "
             "(compute_driver = ironic_snapshot.IronicDriver). The server "
             "scenario snapshots it as the admin (`server image create`) "
             "and deletes the image. Empty, or [service_available] nova "
             "off: the server scenario is skipped."),
    cfg.IntOpt(
        "service_timeout",
        default=1800,
        min=60,
        help="Seconds a snapshot (power off, ramdisk boot, capture, upload, "
             "return to active) may take."),
]
