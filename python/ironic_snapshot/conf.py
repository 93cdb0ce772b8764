"""Agent configuration of the ``snapshot_disk`` step: group ``[snapshot]``.

Operators set these once in the agent's configuration file (for example
``/etc/ironic-python-agent.conf`` or a file in
``/etc/ironic-python-agent.d/`` inside the ramdisk); arguments of a step run
override them. They are not read from ``ipa-*`` kernel parameters: the
kernel command line is readable by every user and logged, no place for the
credential options.

The credential options let the step run without per-run arguments (from an
Ironic runbook): when the step is given no ``image_id`` it authenticates to
Keystone with the configured credential, creates its own image named by
``image_name_template`` and fills it. That credential lives in the ramdisk:
make it an application credential of an operator project, restricted by
access rules to the image calls the step makes.
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
        default="auto",
        help="Most memory the capture holds while streaming to Glance: the "
        "image's metadata, the buffers and, in the rest, compressed data, past "
        "which the engine reads the disk a second time instead: a size such "
        "as 512M, or auto for half of the memory available when the step "
        "starts (the node does nothing else in the ramdisk, and an image that "
        "fits is read and compressed once).",
    ),
    cfg.BoolOpt(
        "skip_free_space",
        default=True,
        help="Skip free space of known filesystems and swap areas.",
    ),
    cfg.BoolOpt(
        "insecure",
        default=False,
        help="Skip TLS certificate verification of the image service and of "
        "Keystone. For test clouds only.",
    ),
    cfg.StrOpt(
        "ca_file",
        help="CA bundle (PEM) to trust for the image service and Keystone, "
        "for clouds with a private CA.",
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
        help="Timeout in seconds of the image service and Keystone requests "
        "the step makes itself (authentication, image creation, checks and "
        "properties), not of the upload.",
    ),
]

#: The operator's credential and the images the step creates with it.
CREDENTIAL_OPTS = [
    cfg.StrOpt(
        "auth_url",
        help="Keystone (identity v3) endpoint, such as "
        "https://keystone.example.org:5000 (with or without /v3). Setting it "
        "lets the step create its own image when it is given no image_id, "
        "authenticating with application_credential_id and "
        "application_credential_secret, or with username and password.",
    ),
    cfg.StrOpt(
        "application_credential_id",
        help="Id of the Keystone application credential the step "
        "authenticates with. Make it belong to an operator project and "
        "restrict it with access rules to the image service calls the step "
        "makes: POST /v2/images, GET, PATCH and DELETE /v2/images/*, PUT "
        "/v2/images/*/file (service image).",
    ),
    cfg.StrOpt(
        "application_credential_secret",
        secret=True,
        help="Secret of the application credential. Never logged.",
    ),
    cfg.StrOpt(
        "username",
        help="User to authenticate as with password, when no application "
        "credential is set (an application credential with access rules is "
        "safer: this password lives in the ramdisk).",
    ),
    cfg.StrOpt(
        "password",
        secret=True,
        help="Password of username. Never logged.",
    ),
    cfg.StrOpt(
        "user_domain_name",
        default="Default",
        help="Domain of username.",
    ),
    cfg.StrOpt(
        "project_name",
        help="Project the password token is scoped to, which owns the images "
        "the step creates (an application credential carries its own "
        "project).",
    ),
    cfg.StrOpt(
        "project_domain_name",
        default="Default",
        help="Domain of project_name.",
    ),
    cfg.StrOpt(
        "interface",
        default="public",
        choices=["public", "internal", "admin"],
        help="Interface of the image service endpoint taken from the Keystone "
        "catalog when glance_endpoint is not set.",
    ),
    cfg.StrOpt(
        "region_name",
        help="Region of the image service endpoint taken from the Keystone "
        "catalog; unset means the first region offering one.",
    ),
    cfg.StrOpt(
        "image_name_template",
        default="snapshot-{node_name}-{timestamp}",
        help="Name of the image the step creates when given no image_id. "
        "Placeholders: {node_uuid}, {node_name} (the node's uuid when it has "
        "no name), {timestamp} (UTC, such as 20261124T201500Z) and {device} "
        "(such as /dev/sda).",
    ),
    cfg.StrOpt(
        "image_visibility",
        default="private",
        choices=["private", "shared", "community", "public"],
        help="Visibility of the images the step creates.",
    ),
    cfg.DictOpt(
        "image_properties",
        default={},
        help="Extra properties of the images the step creates, such as "
        "os_distro:ubuntu,site:lab1. Names starting with snapshot_ are "
        "reserved for the step's report.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the ``[snapshot]`` options on ``conf`` (idempotent).

    :param conf: the configuration object, usually ``oslo_config.cfg.CONF``.
    """
    conf.register_opts(OPTS + CREDENTIAL_OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Options for ``oslo-config-generator`` (entry point ``oslo.config.opts``).

    :returns: the ``[snapshot]`` group and its options.
    """
    return [(GROUP, list(OPTS) + list(CREDENTIAL_OPTS))]
