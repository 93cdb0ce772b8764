"""ironic-python-agent hardware manager offering the ``snapshot_disk`` step.

Registered under the entry point group ``ironic_python_agent.hardware_managers``
as ``snapshot``. The step captures the node's disk, opened read-only, straight
into a queued Glance image, then records the capture report on that image as
``snapshot_*`` properties (Ironic discards what a step returns). The image is
given by id, or, for a runbook that cannot name a per-run image or carry a
token, created by the step with the operator's credential from the agent
configuration.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import threading
import time
from typing import Any

from ironic_python_agent import errors
from ironic_python_agent import hardware
from oslo_config import cfg
from oslo_log import log
from oslo_utils import strutils

from ironic_snapshot import conf as snapshot_conf
from ironic_snapshot import devices
from ironic_snapshot import exceptions
from ironic_snapshot import stored
from ironic_snapshot.errors import IdentityServiceError
from ironic_snapshot.errors import ImageServiceError
from ironic_snapshot.errors import ImageStoredUnverifiedError
from ironic_snapshot.errors import ImageVerificationError
from ironic_snapshot.errors import SnapshotEngineError
from ironic_snapshot.glance import ConfiguredCredential, GlanceImages

LOG = log.getLogger(__name__)
CONF = cfg.CONF
snapshot_conf.register_opts(CONF)

#: Arguments of ``snapshot_disk``. Ironic rejects arguments not listed here;
#: ``auth_token`` contains ``token`` so Ironic masks it in API output (but not
#: in the node's ``service_step`` field or in its logs: see the README).
SNAPSHOT_DISK_ARGSINFO: dict[str, dict[str, Any]] = {
    "image_id": {
        "description": "Id of the Glance image to fill. It must exist, be "
        "queued and have disk_format qcow2 or raw. Without it the step "
        "creates its own image with the credential of the agent "
        "configuration ([snapshot]auth_url and application_credential_*), "
        "named by [snapshot]image_name_template, and deletes it if the "
        "capture fails: what a runbook uses.",
        "required": False,
    },
    "glance_endpoint": {
        "description": "Glance endpoint, such as https://glance.example.org:"
        "9292. Default: [snapshot]glance_endpoint of the agent configuration.",
        "required": False,
    },
    "auth_token": {
        "description": "Keystone token for Glance: make it short-lived and "
        "scoped to this upload, it is visible to whoever can read the node "
        "while the step runs. Default: a token of the credential of the "
        "agent configuration, if one is set.",
        "required": False,
    },
    "device": {
        "description": "Disk to capture, such as /dev/sda. Default: the "
        "node's root device (root device hints).",
        "required": False,
    },
    "disk_format": {
        "description": "qcow2 or raw. Default: the image's disk_format, or "
        "qcow2 for an image the step creates.",
        "required": False,
    },
    "compression": {
        "description": "Cluster compression of qcow2: zstd, zlib or none. "
        "Default: [snapshot]compression (zstd).",
        "required": False,
    },
    "compression_level": {
        "description": "Compression level. Default: that of the method.",
        "required": False,
    },
    "cluster_size": {
        "description": "qcow2 cluster size, 64K to 2M. Default: "
        "[snapshot]cluster_size (64K).",
        "required": False,
    },
    "threads": {
        "description": "Compression threads, 0 for one per core. Default: "
        "[snapshot]threads (0).",
        "required": False,
    },
    "memory_limit": {
        "description": "Memory of the capture (the image's metadata, the "
        "buffers and, in the rest, compressed data held before a second read "
        "of the disk), such as 512M, or auto for half of the memory available. "
        "Default: [snapshot]memory_limit (auto).",
        "required": False,
    },
    "skip_free_space": {
        "description": "Skip free space of known filesystems. Default: "
        "[snapshot]skip_free_space (true).",
        "required": False,
    },
    "insecure": {
        "description": "Skip TLS verification of Glance (test clouds only). "
        "Default: [snapshot]insecure (false).",
        "required": False,
    },
}

#: Prefix of the image properties the step writes.
PROPERTY_PREFIX = "snapshot_"


#: Raised when neither the step nor the agent configuration gives a usable
#: Glance endpoint (and no configured credential can find one in a catalog).
_NO_ENDPOINT = (
    "No valid Glance endpoint for step snapshot_disk: pass "
    "glance_endpoint (http:// or https:// URL) or set "
    "[snapshot]glance_endpoint in the agent configuration"
)


def _bad_arg(name: str, value: Any, expected: str) -> errors.InvalidCommandParamsError:
    return errors.InvalidCommandParamsError(
        f"Invalid value {value!r} for argument {name} of step snapshot_disk: "
        f"expected {expected}"
    )


def _as_int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise _bad_arg(name, value, "an integer")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _bad_arg(name, value, "an integer") from None
    if minimum is not None and number < minimum:
        raise _bad_arg(name, value, f"an integer of at least {minimum}")
    return number


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    try:
        return strutils.bool_from_string(value, strict=True)
    except ValueError:
        raise _bad_arg(name, value, "true or false") from None


def _as_size(name: str, value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise _bad_arg(name, value, "a size such as 64K, 256M or a number of bytes")
    return value


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


#: Placeholders of ``[snapshot]image_name_template``.
NAME_PLACEHOLDERS = ("node_uuid", "node_name", "timestamp", "device")

#: Image attributes Glance owns or the step sets itself: not settable by
#: ``[snapshot]image_properties``.
_RESERVED_IMAGE_ATTRIBUTES = frozenset({
    "id", "name", "status", "visibility", "disk_format", "container_format",
    "owner", "protected", "os_hidden", "checksum", "os_hash_algo",
    "os_hash_value", "size", "virtual_size", "min_disk", "min_ram",
    "locations", "direct_url", "created_at", "updated_at", "tags", "file",
    "schema", "self",
})


@dataclasses.dataclass(frozen=True)
class _NewImage:
    """The image the step creates when it is given no ``image_id``."""

    template: str
    node: dict[str, Any]
    disk_format: str
    visibility: str
    properties: dict[str, str]

    @classmethod
    def from_conf(cls, opts: Any, node: dict[str, Any], disk_format: str) -> _NewImage:
        """Checks the ``[snapshot]`` image options before any I/O.

        :raises InvalidCommandParamsError: a bad template or property name.
        """
        properties = {str(k): str(v) for k, v in (opts.image_properties or {}).items()}
        for key in sorted(properties):
            if key.startswith(PROPERTY_PREFIX) or key in _RESERVED_IMAGE_ATTRIBUTES:
                raise errors.InvalidCommandParamsError(
                    f"[snapshot]image_properties sets {key}, which the step or "
                    "Glance sets itself: remove it from the agent configuration")
        if node.get("uuid"):
            properties[PROPERTY_PREFIX + "node"] = str(node["uuid"])
        image = cls(opts.image_name_template, node, disk_format, opts.image_visibility,
                    properties)
        image.name("/dev/sda")  # fails now rather than after the disk is resolved
        return image

    def name(self, device: str) -> str:
        """The image name from the template, for the disk ``device``.

        :raises InvalidCommandParamsError: the template is not valid.
        """
        uuid = str(self.node.get("uuid") or "unknown-node")
        values = {
            "node_uuid": uuid,
            "node_name": str(self.node.get("name") or uuid),
            "timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ"),
            "device": device,
        }
        try:
            name = str(self.template).format(**values)
        except (KeyError, IndexError, ValueError) as exc:
            raise errors.InvalidCommandParamsError(
                f"[snapshot]image_name_template {self.template!r} is not valid "
                f"({exc.__class__.__name__}: {exc}): use the placeholders "
                f"{', '.join('{' + p + '}' for p in NAME_PLACEHOLDERS)}") from None
        if not name or len(name) > 255:
            raise errors.InvalidCommandParamsError(
                f"[snapshot]image_name_template {self.template!r} gives a name of "
                f"{len(name)} characters: Glance takes 1 to 255")
        return name


class _GlanceAccess:
    """Glance for one step run, and where its token comes from.

    With the configured credential the step can always get a new token, and
    it does before every call after the upload (:meth:`renewed`): a capture
    can outlast a token (Keystone's ``[token] expiration``, 1 h by default),
    and Glance then holds the data while the old token is refused. A token
    given by the caller cannot be renewed (:attr:`caller_token`).

    :param images: the Glance client with the first token.
    :param credential: the configured credential, or ``None`` when the
        token (if any) came from the caller.
    :param auth: keyword arguments of :meth:`ConfiguredCredential.authenticate`.
    """

    def __init__(self, images: GlanceImages, credential: ConfiguredCredential | None,
                 auth: dict[str, Any]) -> None:
        self.images = images
        self._credential = credential
        self._auth = auth

    @property
    def caller_token(self) -> bool:
        """The token came from the caller (or there is none): it cannot be renewed."""
        return self._credential is None

    def token_source(self) -> Any:
        """For the engine: a callable giving a new token when the upload
        starts, or ``None`` when the token cannot be renewed."""
        if self._credential is None:
            return None
        return lambda: self.renewed().token

    def renewed(self) -> GlanceImages:
        """The Glance client with a new token of the configured credential.

        :raises IdentityServiceError: Keystone refused or could not be reached.
        """
        if self._credential is not None:
            access = self._credential.authenticate(**self._auth)
            self.images = self.images.with_token(access.token)
        return self.images


def _withdraw_given_image(access: _GlanceAccess, image_id: str) -> str:
    """Makes an image whose stored bytes are wrong unusable; says what was done.

    The image is the caller's, so it is deactivated rather than deleted: no
    one can boot or download it, and its owner can still look at it. Where
    Glance refuses that (policy: deactivation was admin-only before Glance's
    secure defaults, or the token's access rules lack it), the image is
    deleted instead, because a wrong image must not stay usable.
    """
    try:
        images = access.renewed()
    except IdentityServiceError as exc:
        LOG.error("Snapshot: no token to withdraw image %(image)s: %(error)s",
                  {"image": image_id, "error": exc.details})
        return (f"Image {image_id} could be neither deactivated nor deleted (no new "
                f"token: {exc.details}): it is still active, delete it by hand now")
    try:
        images.deactivate(image_id)
    except ImageServiceError as exc:
        LOG.warning("Snapshot: image %(image)s could not be deactivated, deleting it: "
                    "%(error)s", {"image": image_id, "error": exc.details})
        refused = exc.details
    else:
        LOG.warning("Snapshot: deactivated image %s, whose stored data does not match",
                    image_id)
        return f"Image {image_id} was deactivated so that nobody can use it"
    try:
        images.delete(image_id)
    except ImageServiceError as exc:
        LOG.error("Snapshot: image %(image)s could be neither deactivated nor deleted: "
                  "%(error)s", {"image": image_id, "error": exc.details})
        return (f"Image {image_id} could be neither deactivated ({refused}) nor deleted "
                f"({exc.details}): it is still active, delete it by hand now")
    return f"Image {image_id} was deleted (deactivating it failed: {refused})"


def _delete_own_image(access: _GlanceAccess, image_id: str) -> str:
    """Deletes an image the step created; returns what happened, for the error."""
    try:
        access.renewed().delete(image_id)
    except (ImageServiceError, IdentityServiceError) as exc:
        LOG.error("Snapshot: the image %(image)s the step created could not be "
                  "deleted after the failure: %(error)s",
                  {"image": image_id, "error": exc.details})
        return (f"The image {image_id} the step created could not be deleted "
                f"({exc.details}): delete it by hand")
    LOG.info("Snapshot: deleted the image %s the step created, after the failure",
             image_id)
    return f"The image {image_id} the step created was deleted"


class _ProgressLog:
    """Progress callback logging percent, rate and ETA at INFO."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._phase: str | None = None
        self._phase_start = time.monotonic()
        self._phase_done = 0
        self._lock = threading.Lock()

    def __call__(self, update: dict[str, Any]) -> None:
        with self._lock:
            now = time.monotonic()
            done, total = update["done"], update["total"]
            if update["phase"] != self._phase:
                # The rate of a phase counts from its first update: a phase
                # may start with work already done (such as skipped zeros).
                self._phase = update["phase"]
                self._phase_start = now
                self._phase_done = done
            elapsed = now - self._phase_start
            percent = 100.0 * done / total if total else 100.0
            rate = (done - self._phase_done) / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / rate if rate > 0 else None
            LOG.info(
                "Snapshot of %(device)s: %(phase)s %(percent).1f%% "
                "(%(done)s of %(total)s) at %(rate)s/s, ETA %(eta)s, "
                "%(written)s of image written",
                {
                    "device": self.device,
                    "phase": update["phase"],
                    "percent": percent,
                    "done": _human(done),
                    "total": _human(total),
                    "rate": _human(rate),
                    "eta": f"{eta:.0f} s" if eta is not None else "unknown",
                    "written": _human(update["written"]),
                },
            )


class SnapshotHardwareManager(hardware.HardwareManager):
    """Offers the ``snapshot_disk`` service step."""

    HARDWARE_MANAGER_NAME = "SnapshotHardwareManager"
    HARDWARE_MANAGER_VERSION = "1.0"

    def evaluate_hardware_support(self) -> int:
        """Offer the step only when the imaging engine loads.

        :returns: ``HardwareSupport.SERVICE_PROVIDER``, or ``NONE`` when the
            engine extension cannot be imported.
        """
        try:
            engine = importlib.import_module("ironic_snapshot._engine")
        except ImportError as exc:
            LOG.error(
                "The ironic-snapshot imaging engine cannot be loaded, the "
                "snapshot_disk step is not offered: %s. Reinstall the "
                "ironic-snapshot wheel built for this platform",
                exc,
            )
            return hardware.HardwareSupport.NONE
        LOG.info("ironic-snapshot engine %s loaded", engine.VERSION)
        return hardware.HardwareSupport.SERVICE_PROVIDER

    def get_service_steps(self, node: dict[str, Any], ports: list[Any]) -> list[dict[str, Any]]:
        """The ``snapshot_disk`` step, on interface ``deploy``.

        :param node: the Ironic node.
        :param ports: the node's ports.
        :returns: the step description with its ``argsinfo``.
        """
        return [
            {
                "step": "snapshot_disk",
                "priority": 0,
                "interface": "deploy",
                "reboot_requested": False,
                "abortable": False,
                "argsinfo": SNAPSHOT_DISK_ARGSINFO,
            }
        ]

    def snapshot_disk(self, node: dict[str, Any], ports: list[Any], **kwargs: Any) -> dict[str, Any]:
        """Capture the node's disk into a queued Glance image.

        The image is the one ``image_id`` names, or, without ``image_id``, one
        the step creates with the credential of the agent configuration
        (``[snapshot]auth_url`` and ``application_credential_*``), named by
        ``[snapshot]image_name_template``; the step logs its id at INFO and
        deletes it if the capture fails. Without ``auth_token`` the step
        authenticates with that configured credential too, if one is set.

        :param node: the Ironic node.
        :param ports: the node's ports.
        :param kwargs: the step arguments, see :data:`SNAPSHOT_DISK_ARGSINFO`.
        :returns: ``image_id``, ``device``, the capture ``report`` and, for
            an image the step created, ``image_created`` (Ironic discards it;
            the report is also stored on the image as ``snapshot_*``
            properties).
        :raises InvalidCommandParamsError: bad or missing arguments, or an
            incomplete credential or image template in the configuration.
        :raises BlockDeviceError: the disk is missing, not a block device,
            in use, or cannot be read.
        :raises IdentityServiceError: Keystone refused the configured
            credential or could not be reached.
        :raises ImageServiceError: Glance refused or could not be reached.
        :raises ImageVerificationError: Glance stored other bytes than sent.
        """
        unknown = sorted(set(kwargs) - set(SNAPSHOT_DISK_ARGSINFO))
        if unknown:
            raise errors.InvalidCommandParamsError(
                f"Unknown arguments of step snapshot_disk: {', '.join(unknown)}; "
                f"known: {', '.join(sorted(SNAPSHOT_DISK_ARGSINFO))}"
            )
        opts = CONF.snapshot
        image_id = kwargs.get("image_id")
        if image_id is not None and (
            not isinstance(image_id, str) or not image_id or "/" in image_id
        ):
            raise _bad_arg("image_id", image_id, "the id of a queued Glance image, "
                           "or no image_id to let the step create its image")
        endpoint = kwargs.get("glance_endpoint") or opts.glance_endpoint
        if endpoint is not None and (
            not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))
        ):
            raise errors.InvalidCommandParamsError(_NO_ENDPOINT)
        token = kwargs.get("auth_token") or None
        if token is not None and not isinstance(token, str):
            raise errors.InvalidCommandParamsError(
                "Argument auth_token of step snapshot_disk must be a string"
            )
        # A token of the run wins; without one, the operator's configured
        # credential (the only way a stored runbook can authenticate).
        credential = None
        if token is None:
            try:
                credential = ConfiguredCredential.from_conf(opts)
            except ValueError as exc:
                raise errors.InvalidCommandParamsError(
                    f"Step snapshot_disk cannot authenticate: {exc}") from None
        if image_id is None and token is None and credential is None:
            raise errors.InvalidCommandParamsError(
                "Step snapshot_disk has no image to fill: pass image_id (a queued "
                "Glance image, with glance_endpoint and auth_token), or let the "
                "step create its image by setting [snapshot]auth_url with "
                "application_credential_id and application_credential_secret "
                "in the agent configuration"
            )
        if endpoint is None and credential is None:
            raise errors.InvalidCommandParamsError(_NO_ENDPOINT)
        disk_format = kwargs.get("disk_format")
        if disk_format is not None and disk_format not in ("qcow2", "raw"):
            raise _bad_arg("disk_format", disk_format, "qcow2 or raw")
        new_image = None
        if image_id is None:
            new_image = _NewImage.from_conf(opts, node, disk_format or "qcow2")
        compression = kwargs.get("compression", opts.compression)
        if compression not in ("zstd", "zlib", "none"):
            raise _bad_arg("compression", compression, "zstd, zlib or none")
        level = kwargs.get("compression_level", opts.compression_level)
        level = None if level is None else _as_int("compression_level", level)
        threads = _as_int("threads", kwargs.get("threads", opts.threads), 0)
        cluster_size = _as_size("cluster_size", kwargs.get("cluster_size", opts.cluster_size))
        memory_limit = _as_size("memory_limit", kwargs.get("memory_limit", opts.memory_limit))
        skip_free_space = _as_bool("skip_free_space", kwargs.get("skip_free_space", opts.skip_free_space))
        # The engine's own rules (the client runs the same check before the
        # node is shut down): refuse a bad value before the disk is touched.
        engine = importlib.import_module("ironic_snapshot._engine")
        try:
            engine.check_options(format=disk_format, compression=compression, level=level,
                                 cluster_size=cluster_size, threads=threads,
                                 memory_limit=memory_limit)
        except exceptions.InvalidInputError as exc:
            raise errors.InvalidCommandParamsError(f"Step snapshot_disk: {exc}") from None
        insecure = _as_bool("insecure", kwargs.get("insecure", opts.insecure))
        verify: bool | str = opts.ca_file or not insecure

        device = kwargs.get("device")
        if device is not None and (not isinstance(device, str) or not device.startswith("/")):
            raise _bad_arg("device", device, "an absolute device path such as /dev/sda")
        if device is None:
            device = hardware.dispatch_to_managers("get_os_install_device", permit_refresh=True)
            LOG.info("Snapshot: using the node's root device %s", device)
        devices.check_capturable(device)

        refused_hint = None
        auth = {"verify": verify, "timeout": opts.api_timeout, "interface": opts.interface,
                "region": opts.region_name}
        if credential is not None:
            access = credential.authenticate(**auth)
            token = access.token
            endpoint = endpoint or access.image_endpoint
            if not endpoint:
                raise errors.InvalidCommandParamsError(
                    f"No Glance endpoint for step snapshot_disk: the Keystone "
                    f"catalog of the {credential.describe()} has no {opts.interface} "
                    f"image endpoint{' in region ' + opts.region_name if opts.region_name else ''}: "
                    "set [snapshot]glance_endpoint (or interface, region_name) in "
                    "the agent configuration"
                )
            refused_hint = (
                f"the {credential.describe()} of [snapshot] lacks access: its "
                "access rules must allow POST /v2/images, GET, PATCH and DELETE "
                "/v2/images/{image_id} and PUT /v2/images/{image_id}/file of "
                "service image"
            )
        images = GlanceImages(str(endpoint), token, verify, opts.api_timeout, refused_hint)
        glance = _GlanceAccess(images, credential, auth)
        capture_args = {
            "compression": compression, "level": level,
            "cluster_size": cluster_size, "threads": threads,
            "memory_limit": memory_limit, "skip_free_space": skip_free_space,
            "insecure": insecure,
        }

        if image_id is not None:
            disk_format = self._check_given_image(images, image_id, disk_format)
            return self._capture_into(glance, image_id, disk_format, node, device,
                                      own_image=False, **capture_args)
        if new_image is None:  # unreachable: made above when image_id is None
            raise SnapshotEngineError("Step snapshot_disk has no image to fill")

        image = images.create(new_image.name(device), new_image.disk_format,
                              new_image.visibility, new_image.properties)
        image_id = image["id"]
        LOG.info(
            "Snapshot: created image %(image)s named %(name)s in Glance at "
            "%(endpoint)s (%(visibility)s, owner %(owner)s) for node %(node)s",
            {"image": image_id, "name": image.get("name"), "endpoint": images.endpoint,
             "visibility": image.get("visibility"), "owner": image.get("owner"),
             "node": node.get("uuid")},
        )
        try:
            result = self._capture_into(glance, image_id, new_image.disk_format, node,
                                        device, own_image=True, **capture_args)
        except ImageStoredUnverifiedError:
            # The caller verifies and keeps it (its token made the image).
            raise
        except Exception as exc:
            # The image is the step's own: nobody else would clean it up.
            outcome = _delete_own_image(glance, image_id)
            if isinstance(exc, errors.RESTError):
                exc.details = f"{exc.details}. {outcome}"
            raise
        result["image_created"] = True
        return result

    @staticmethod
    def _check_given_image(images: GlanceImages, image_id: str,
                           disk_format: str | None) -> str:
        """Checks that the image given by id can be filled; returns its format."""
        image = images.get(image_id)
        if image.get("status") != "queued":
            raise ImageServiceError(
                f"Image {image_id} is {image.get('status')}, not queued: "
                "snapshot into a new image (images receive data only once)"
            )
        image_format = image.get("disk_format")
        if image_format not in ("qcow2", "raw"):
            raise ImageServiceError(
                f"Image {image_id} has disk_format {image_format!r}: create "
                "it with disk_format qcow2 or raw (and container_format bare)"
            )
        if disk_format is None:
            return str(image_format)
        if disk_format != image_format:
            raise errors.InvalidCommandParamsError(
                f"Argument disk_format {disk_format} differs from the "
                f"disk_format {image_format} of image {image_id}: Glance would "
                "reject the data; drop the argument or create a matching image"
            )
        return disk_format

    def _capture_into(self, glance: _GlanceAccess, image_id: str, disk_format: str,
                      node: dict[str, Any], device: str, *, compression: str,
                      level: int | None, cluster_size: int | str, threads: int,
                      memory_limit: int | str, skip_free_space: bool,
                      insecure: bool, own_image: bool) -> dict[str, Any]:
        """Captures ``device`` into the queued ``image_id`` and records the report.

        The same for an image given by id and one the step created
        (``own_image``), except after a failed digest check: a given image is
        deactivated (or deleted), an own image is left to the caller to delete.

        Once Glance holds the data every call renews the token of the
        configured credential; a caller's token that Glance refuses by then
        (401: it expired during the capture) fails the step with
        :class:`ImageStoredUnverifiedError`, whose message carries the report.
        """
        opts = CONF.snapshot
        # The checks and the image creation before may have taken a while
        # (a busy Keystone or Glance): start the capture with a new token.
        images = glance.renewed()
        LOG.info(
            "Snapshot of %(device)s into image %(image)s at %(endpoint)s as "
            "%(format)s (compression %(compression)s)",
            {"device": device, "image": image_id, "endpoint": images.endpoint,
             "format": disk_format, "compression": compression},
        )
        engine = importlib.import_module("ironic_snapshot._engine")
        try:
            report = engine.capture(
                device,
                glance_image=image_id,
                glance_endpoint=images.endpoint,
                token=images.token,
                format=disk_format,
                compression=compression,
                level=level,
                cluster_size=cluster_size,
                threads=threads,
                memory_limit=memory_limit,
                skip_free_space=skip_free_space,
                progress=_ProgressLog(device),
                progress_interval=float(opts.progress_interval),
                insecure=insecure,
                ca_file=opts.ca_file,
                # A forward-only qcow2 starts its upload only once the
                # whole disk is read: with a new token where the step can
                # get one. The digests are checked below, with another.
                token_source=glance.token_source(),
                verify_upload=False,
            )
        except exceptions.InvalidInputError as exc:
            raise errors.InvalidCommandParamsError(f"Step snapshot_disk: {exc}") from exc
        except exceptions.SourceError as exc:
            raise errors.BlockDeviceError(f"Reading {device} failed: {exc}") from exc
        except exceptions.UploadError as exc:
            raise ImageServiceError(
                f"Upload of {device} into image {image_id} failed, the image "
                f"is not active: {exc}", status=exc.status
            ) from exc
        except exceptions.SnapshotError as exc:
            raise SnapshotEngineError(f"Capture of {device} failed: {exc}") from exc

        # From here on Glance holds the data: the upload's token may have
        # expired during a long capture, so every call gets a new one where
        # the step can (the configured credential).
        properties = self._report_properties(report, node, device)
        try:
            images = glance.renewed()
            images.verify_upload(image_id, report, insecure=insecure, ca_file=opts.ca_file)
        except IdentityServiceError as exc:
            raise IdentityServiceError(
                f"Image {image_id} is stored, but the step could not get a new token to "
                f"verify it: {exc.details}") from exc
        except exceptions.VerificationError as exc:
            if own_image:
                # The caller deletes the step's own image, and says so.
                outcome = "Snapshot again"
            else:
                outcome = _withdraw_given_image(glance, image_id) + "; snapshot again"
            raise ImageVerificationError(
                f"Image {image_id} does not match the data of {device}: {exc}. {outcome}"
            ) from exc
        except exceptions.UploadError as exc:
            if exc.status == 401 and glance.caller_token:
                raise ImageStoredUnverifiedError(stored.details(
                    image_id, "Glance refused the auth_token when the step read the image "
                    "back (HTTP 401): it expired during the capture", properties)) from exc
            raise ImageServiceError(
                f"Image {image_id} holds the upload of {device}, but the step could not "
                f"read it back to verify it: {exc}", status=exc.status) from exc
        except exceptions.SnapshotError as exc:
            raise SnapshotEngineError(
                f"Image {image_id} holds the upload of {device}, but verifying it "
                f"failed: {exc}") from exc

        LOG.info(
            "Snapshot of %(device)s into image %(image)s done: %(size)s image "
            "of a %(vsize)s disk in %(seconds).1f s, sha256 %(sha256)s",
            {"device": device, "image": image_id,
             "size": _human(report["image_size"]),
             "vsize": _human(report["virtual_size"]),
             "seconds": report["seconds"], "sha256": report["sha256"]},
        )
        try:
            glance.renewed().set_properties(image_id, properties)
        except IdentityServiceError as exc:
            raise IdentityServiceError(
                f"Image {image_id} is stored and verified, but the step could not get a "
                f"new token to record the snapshot report on it: {exc.details}") from exc
        except ImageServiceError as exc:
            if exc.status == 401 and glance.caller_token:
                raise ImageStoredUnverifiedError(stored.details(
                    image_id, "Glance refused the auth_token when the step recorded the "
                    "report (HTTP 401): it expired during the capture", properties,
                    verified=True)) from exc
            raise ImageServiceError(
                f"Image {image_id} is stored and verified, but the snapshot "
                f"report could not be recorded on it: {exc.details}", status=exc.status
            ) from exc
        return {"image_id": image_id, "device": device, "report": report}

    @staticmethod
    def _report_properties(report: dict[str, Any], node: dict[str, Any], device: str) -> dict[str, str]:
        """The report as ``snapshot_*`` image properties with their provenance record.

        Built by the engine (``provenance_properties``), the one builder the
        CLI's Glance upload uses too, so that ``ironic-snapshot verify``
        finds any of these properties edited after the snapshot.
        """
        engine = importlib.import_module("ironic_snapshot._engine")
        properties: dict[str, str] = engine.provenance_properties(
            report, node=node.get("uuid"), device=device,
            parent_image=(node.get("instance_info") or {}).get("image_source"))
        return properties
