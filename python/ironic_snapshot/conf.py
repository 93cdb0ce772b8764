"""Agent configuration of the ``snapshot_disk`` step: group ``[snapshot]``.

Operators set these once in the agent's configuration (for example
``/etc/ironic-python-agent.conf`` in the ramdisk, or kernel parameters via
``ipa-*``); arguments of a step run override them.
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = "snapshot"

OPTS = [
    cfg.StrOpt(
        "glance_endpoint",
        help="Image service (Glance) endpoint the step uploads to when the "
        "step is not given glance_endpoint, such as "
        "https://glance.example.org:9292.",
    ),
    cfg.StrOpt(
        "compression",
        default="zstd",
        choices=["zstd", "zlib", "none"],
        help="Compression of qcow2 clusters. zlib is readable by every qcow2 "
        "consumer; zstd needs qemu 5.1 or newer.",
    ),
    cfg.IntOpt(
        "compression_level",
        help="Compression level; unset means the default of the method "
        "(3 for zstd, 6 for zlib).",
    ),
    cfg.StrOpt(
        "cluster_size",
        default="64K",
        help="qcow2 cluster size: a power of two from 64K to 2M.",
    ),
    cfg.IntOpt(
        "threads",
        default=0,
        min=0,
        help="Compression workers; 0 means one per CPU core.",
    ),
    cfg.StrOpt(
        "memory_limit",
        default="256M",
        help="Most compressed data held in memory while streaming to Glance "
        "before the engine reads the disk a second time instead.",
    ),
    cfg.BoolOpt(
        "skip_free_space",
        default=True,
        help="Skip free space of known filesystems and swap areas.",
    ),
    cfg.BoolOpt(
        "insecure",
        default=False,
        help="Skip TLS certificate verification of the image service. For "
        "test clouds only.",
    ),
    cfg.StrOpt(
        "ca_file",
        help="CA bundle (PEM) to trust for the image service, for clouds "
        "with a private CA.",
    ),
    cfg.IntOpt(
        "progress_interval",
        default=5,
        min=1,
        help="Seconds between two progress lines in the agent log.",
    ),
    cfg.IntOpt(
        "api_timeout",
        default=60,
        min=1,
        help="Timeout in seconds of the image service requests the step makes "
        "itself (image checks and properties), not of the upload.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the ``[snapshot]`` options on ``conf`` (idempotent).

    :param conf: the configuration object, usually ``oslo_config.cfg.CONF``.
    """
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Options for ``oslo-config-generator`` (entry point ``oslo.config.opts``).

    :returns: the ``[snapshot]`` group and its options.
    """
    return [(GROUP, list(OPTS))]
