"""Nova compute configuration of the snapshot driver: group ``[ironic_snapshot]`` of nova.conf.

Listed for ``oslo-config-generator`` under the namespace ``ironic_snapshot.nova``.
Only oslo.config is imported here, so the generator works without Nova.
"""

from __future__ import annotations

from oslo_config import cfg

__all__ = ["GROUP", "OPTS", "list_opts", "register_opts"]

GROUP = "ironic_snapshot"

OPTS = [
    cfg.URIOpt(
        "auth_url",
        schemes=["http", "https"],
        help="Keystone (identity) URL where the driver creates the upload credential "
        "with the user's token, such as https://keystone.example.org/identity. "
        "Nova's request context carries no identity endpoint, so this is required "
        "for snapshots.",
    ),
    cfg.URIOpt(
        "glance_endpoint",
        schemes=["http", "https"],
        help="Image service (Glance) endpoint the node's agent uploads to, such as "
        "https://glance.example.org:9292. It must be reachable from the ramdisk. "
        "Default: the image endpoint of the user's service catalog.",
    ),
    cfg.StrOpt(
        "disk_format",
        default="qcow2",
        choices=["qcow2", "raw"],
        help="Disk format of the snapshot images.",
    ),
    cfg.StrOpt(
        "compression",
        default="zstd",
        choices=["zstd", "zlib", "none"],
        help="Cluster compression of qcow2 snapshots. zlib is readable by every "
        "qcow2 consumer; zstd needs qemu 5.1 or newer.",
    ),
    cfg.IntOpt(
        "timeout",
        default=3600,
        min=60,
        help="Seconds a snapshot may take from the shutdown to the verified image; "
        "also the lifetime of the upload credential.",
    ),
    cfg.BoolOpt(
        "clean_shutdown",
        default=True,
        help="Ask the instance's operating system to power off (soft power off) "
        "before capturing, so that the disk is consistent. Without it Ironic "
        "powers the node off hard and the image is only crash-consistent.",
    ),
    cfg.IntOpt(
        "shutdown_timeout",
        default=300,
        min=1,
        help="Seconds the operating system gets to power off cleanly.",
    ),
    cfg.DictOpt(
        "step_args",
        default={},
        help="More snapshot_disk step arguments, such as "
        "compression_level:9,threads:4,memory_limit:auto. Known keys: "
        "compression_level, cluster_size, threads, memory_limit, "
        "skip_free_space, insecure. Values that look like integers or "
        "booleans are passed as such.",
    ),
    cfg.IntOpt(
        "poll_interval",
        default=5,
        min=1,
        help="Seconds between two looks at the node while it snapshots.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Registers the ``[ironic_snapshot]`` options on ``conf`` (Nova's ``CONF``)."""
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The options for ``oslo-config-generator --namespace ironic_snapshot.nova``."""
    return [(GROUP, list(OPTS))]
