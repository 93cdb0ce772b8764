"""Snapshot a node in one call: checks, clean shutdown, credential, service, verification.

The order is chosen so that everything that can be checked is checked before
the node loses its running OS, and everything this call creates is removed
again when it fails:

1. find the node (by name/UUID, or as the host of a server) and check it:
   ``active``, not in maintenance, no operation pending, an agent-based deploy
   interface, an Ironic API with the ``service`` verb;
2. check the request (name, formats, visibility, properties) and find Glance
   in the catalog (or take the given endpoint);
3. create the Glance image (``queued``) as the caller;
4. ask the OS to power off cleanly (soft power off, with a timeout), because
   ``service`` powers the node off hard and the disk would only be
   crash-consistent;
5. mint the upload credential (:mod:`ironic_snapshot.client.credential`)
   and its token, after the shutdown so that none of the token's life
   (Keystone's ``[token] expiration``) is spent waiting for the OS;
6. ``service`` with the ``snapshot_disk`` step; follow the node;
7. verify the image (active, Glance's digests equal to the report the step
   wrote as properties) and delete the credential. When the token expired
   during the capture, the step fails after Glance stored the data with the
   report in its message: the image is verified here against it, the report
   recorded and the node brought back to ``active``.

On failure: the image is deleted (unless ``keep_failed``), the credential is
deleted, a node in ``service failed`` or ``service wait`` is aborted back to
``active`` and powered on again if this call powered it off.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from keystoneauth1 import exceptions as ks_exc

from ironic_snapshot import _engine
from ironic_snapshot.client import credential as cred
from ironic_snapshot.client.errors import (
    ImageError,
    NodeNotFoundError,
    ShutdownError,
    SnapshotClientError,
    SnapshotTimeoutError,
    StepFailedError,
    ValidationError,
    VerificationFailedError,
)
from ironic_snapshot import stored
from ironic_snapshot.exceptions import InvalidInputError
from ironic_snapshot.glance import PATCH_MEDIA_TYPE, normalise_endpoint

__all__ = [
    "AGENT_DEPLOY_INTERFACES",
    "Progress",
    "SnapshotResult",
    "SnapshotStatus",
    "check_node",
    "find_node",
    "get_snapshot",
    "snapshot_node",
]

LOG = logging.getLogger(__name__)

#: The service step the client requests (see the hardware manager).
STEP = "snapshot_disk"
#: Deploy interfaces whose service steps run in ironic-python-agent.
AGENT_DEPLOY_INTERFACES = frozenset({"direct", "custom-agent", "bootc", "ramdisk"})
DISK_FORMATS = ("qcow2", "raw")
COMPRESSIONS = ("zstd", "zlib", "none")
VISIBILITIES = ("private", "shared", "community", "public")
#: Provision states of a node whose service is under way (Ironic calls the
#: running one ``servicing``; ``service`` is only the verb).
SERVICE_STATES = frozenset({"servicing", "service wait"})
#: Ironic API microversion of the ``service`` verb (2024.1).
SERVICE_MICROVERSION = "1.87"
#: Ironic API microversion of soft power off with a timeout.
SOFT_POWER_MICROVERSION = "1.27"
#: Image properties Glance owns or refuses; ``snapshot_*`` belong to the step.
RESERVED_PROPERTIES = frozenset({
    "id", "name", "status", "visibility", "checksum", "size", "virtual_size",
    "created_at", "updated_at", "file", "schema", "self", "locations", "direct_url",
    "owner", "protected", "os_hidden", "os_hash_algo", "os_hash_value", "tags",
    "disk_format", "container_format", "min_disk", "min_ram", "stores",
})
#: Optional step arguments a caller may pass through ``step_args``.
PASSTHROUGH_STEP_ARGS = frozenset({
    "compression_level", "cluster_size", "threads", "memory_limit", "skip_free_space",
    "insecure",
})
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
#: A quoted key holding ``token``, ``password`` or ``secret`` and its quoted
#: value, as Ironic writes a step's arguments into ``last_error`` (a Python
#: dict's repr, or JSON).
_SECRET_ITEM = re.compile(
    r"""(?P<key>(?P<q>['"])[^'"]*(?:token|password|secret)[^'"]*(?P=q)\s*:\s*)"""
    r"""(?P<vq>['"])(?:(?!(?P=vq)).)*(?P=vq)""", re.IGNORECASE)
#: Ironic's ``fault`` of a node it put in maintenance because a service failed.
SERVICE_FAILURE_FAULT = "service failure"


def redact(text: str | None) -> str | None:
    """``text`` with the values of secret-looking keys replaced by ``***``.

    Ironic's ``last_error`` (and ``maintenance_reason``) of a failed or timed
    out service quote the whole step, arguments included, so the upload
    token would reach every message built from them (the CLI's error, Nova's
    instance fault and logs). Ironic masks such keys in ``service_step``
    only.
    """
    if not text:
        return text
    return _SECRET_ITEM.sub(lambda m: f"{m.group('key')}{m.group('vq')}***{m.group('vq')}",
                            text)


@dataclasses.dataclass(frozen=True)
class Progress:
    """One observation of a running snapshot, passed to the ``progress`` callback.

    :ivar phase: ``shutdown``, ``service`` or ``verify``.
    :ivar node_id: the node's UUID.
    :ivar provision_state: the node's provision state now.
    :ivar image_status: the image's Glance status now (``queued``, ``saving`` ...).
    :ivar elapsed: seconds since the call started.
    """

    phase: str
    node_id: str
    provision_state: str | None
    image_status: str | None
    elapsed: float


@dataclasses.dataclass(frozen=True)
class SnapshotResult:
    """A snapshot: the image and the figures of its capture.

    With ``wait=False`` only the identifiers are set and :attr:`status` is
    ``running``; :func:`get_snapshot` tells the outcome later.

    :ivar image_id: the Glance image id.
    :ivar image_name: its name.
    :ivar node_id: the node's UUID.
    :ivar status: ``active`` (done and verified) or ``running``.
    :ivar disk_format: ``qcow2`` or ``raw``.
    :ivar compression: cluster compression of a qcow2 image.
    :ivar size: bytes stored in Glance.
    :ivar virtual_size: bytes of the captured disk.
    :ivar sha256: SHA-256 of the image data, from the step's report.
    :ivar sha512: SHA-512 of the image data, equal to Glance's ``os_hash_value``.
    :ivar md5: MD5 of the image data, equal to Glance's ``checksum``.
    :ivar capture_seconds: seconds the capture itself took (in the agent).
    :ivar elapsed_seconds: seconds this call took, shutdown and reboots included.
    :ivar glance_endpoint: the endpoint the agent uploaded to.
    """

    image_id: str
    image_name: str
    node_id: str
    status: str
    disk_format: str
    compression: str | None = None
    size: int | None = None
    virtual_size: int | None = None
    sha256: str | None = None
    sha512: str | None = None
    md5: str | None = None
    capture_seconds: float | None = None
    elapsed_seconds: float | None = None
    glance_endpoint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for JSON output)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SnapshotStatus:
    """The outcome of a snapshot, as :func:`get_snapshot` finds it.

    :ivar state: ``running``, ``succeeded`` or ``failed``.
    :ivar image_id: the Glance image id.
    :ivar node_id: the node's UUID (from the image's ``snapshot_node``).
    :ivar message: what happened, for a human.
    :ivar image_status: the image's Glance status.
    :ivar provision_state: the node's provision state.
    :ivar last_error: the node's ``last_error`` when it failed.
    :ivar result: the verified figures when ``state`` is ``succeeded``.
    """

    state: str
    image_id: str
    node_id: str | None
    message: str
    image_status: str | None = None
    provision_state: str | None = None
    last_error: str | None = None
    result: SnapshotResult | None = None


# -- HTTP helpers -------------------------------------------------------------------------


def _error_text(response: Any) -> str:
    """The service's own error message from a response, shortened, no HTML."""
    text = (response.text or "").strip()
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        if "error_message" in body:  # Ironic wraps a JSON document in a string
            inner = body["error_message"]
            try:
                import json

                inner = json.loads(inner).get("faultstring", inner)
            except (TypeError, ValueError, AttributeError):
                pass
            text = str(inner)
        elif isinstance(body.get("error"), dict):
            text = str(body["error"].get("message") or body["error"])
        elif body.get("message"):
            text = str(body["message"])
    text = " ".join(re.sub(r"<[^>]*>", " ", text).split())
    return text[:400] or f"HTTP {response.status_code}"


def _call(adapter: Any, method: str, url: str, what: str, error: type[SnapshotClientError],
          **kwargs: Any) -> Any:
    """One request through an openstacksdk proxy; raises ``error`` on failure."""
    try:
        response = adapter.request(url, method, raise_exc=False, **kwargs)
    except ks_exc.EndpointNotFound as exc:
        raise error(f"Cannot {what}: the service is not in the catalog ({exc}): check the "
                    "cloud's catalog and your region") from exc
    except ks_exc.ConnectionError as exc:
        raise error(f"Cannot {what}: the service could not be reached "
                    f"({exc.__class__.__name__}): check that it is up and reachable") from exc
    except ks_exc.ClientException as exc:
        raise error(f"Cannot {what}: {exc}") from exc
    if response.status_code >= 400:
        raise error(f"Cannot {what}: HTTP {response.status_code}: {_error_text(response)}")
    return response


def _ironic(conn: Any, method: str, url: str, what: str, *,
            error: type[SnapshotClientError] = SnapshotClientError,
            microversion: str = SERVICE_MICROVERSION, **kwargs: Any) -> Any:
    return _call(conn.baremetal, method, url, what, error, microversion=microversion, **kwargs)


#: Reads of a node that a snapshot in progress retries when Ironic answers
#: 5xx (a busy database), one poll interval apart, before giving up.
NODE_READ_ATTEMPTS = 5


def _node(conn: Any, ident: str, *, attempts: int = 1, pause: float = 0.0) -> dict[str, Any]:
    """The node's record; ``attempts`` reads when Ironic answers 5xx, ``pause`` s apart."""
    for attempt in range(1, attempts + 1):
        try:
            response = conn.baremetal.request(f"/nodes/{ident}", "GET", raise_exc=False,
                                              microversion=SERVICE_MICROVERSION)
        except ks_exc.ClientException as exc:
            raise SnapshotClientError(f"Cannot read node {ident} from Ironic: {exc}") from exc
        if response.status_code < 500 or attempt == attempts:
            break
        LOG.warning("Ironic answered HTTP %s reading node %s (attempt %d of %d): %s",
                    response.status_code, ident, attempt, attempts, _error_text(response))
        time.sleep(pause)
    if response.status_code == 404:
        raise NodeNotFoundError(
            f"Node {ident} not found: check its name or UUID, and that your project owns "
            "or leases it (Ironic hides other projects' nodes)")
    if response.status_code >= 400:
        raise SnapshotClientError(f"Cannot read node {ident} from Ironic: HTTP "
                                  f"{response.status_code}: {_error_text(response)}")
    node: dict[str, Any] = response.json()
    return node


def _image(conn: Any, image_id: str) -> dict[str, Any] | None:
    """The image's JSON record, or None when Glance says 404."""
    try:
        response = conn.image.request(f"/images/{image_id}", "GET", raise_exc=False)
    except ks_exc.ClientException as exc:
        raise ImageError(f"Cannot read image {image_id} from Glance: {exc}",
                         image_id=image_id) from exc
    if response.status_code == 404:
        return None
    if response.status_code >= 400:
        raise ImageError(f"Cannot read image {image_id} from Glance: HTTP "
                         f"{response.status_code}: {_error_text(response)}", image_id=image_id)
    record: dict[str, Any] = response.json()
    return record


# -- checks -------------------------------------------------------------------------------


def find_node(conn: Any, node: str | None = None, server: str | None = None) -> dict[str, Any]:
    """The node to snapshot, by name/UUID or as the host of a server.

    :param conn: an ``openstack.connection.Connection``.
    :param node: the node's name or UUID.
    :param server: a server (Nova instance) UUID or name; the node is the one
        whose ``instance_uuid`` is the server's id.
    :returns: the node's JSON record.
    :raises ValidationError: neither or both given.
    :raises NodeNotFoundError: no such node visible to the caller.
    """
    if bool(node) == bool(server):
        raise ValidationError("Give either a node (name or UUID) or a server, not both "
                              "and not neither")
    if node:
        return _node(conn, node)
    assert server is not None
    server_id = server
    if not _UUID.match(server):
        try:
            found = conn.compute.find_server(server, ignore_missing=True)
        except (ks_exc.EndpointNotFound, ks_exc.ClientException) as exc:
            raise ValidationError(
                f"Cannot look server {server} up by name ({exc.__class__.__name__}): "
                "pass the server's UUID") from exc
        if found is None:
            raise NodeNotFoundError(f"Server {server} not found: check its name, or pass "
                                    "its UUID")
        server_id = found.id
    response = _ironic(conn, "GET", f"/nodes?instance_uuid={server_id}",
                       f"find the node of server {server}", error=SnapshotClientError)
    nodes = response.json().get("nodes", [])
    if not nodes:
        raise NodeNotFoundError(
            f"No bare-metal node hosts server {server}: it is not a bare-metal instance, "
            "or its node is not visible to your project")
    return _node(conn, nodes[0]["uuid"])


def check_node(node: dict[str, Any]) -> None:
    """Checks that ``node`` can be serviced now.

    :raises ValidationError: with what is wrong and what to do.
    """
    ident = node.get("name") or node["uuid"]
    state, target = node.get("provision_state"), node.get("target_provision_state")
    if state != "active" or target:
        raise ValidationError(
            f"Node {ident} is {state}" + (f" (moving to {target})" if target else "")
            + ", not active: only a deployed node in a stable active state can be "
            "snapshotted", node_id=node["uuid"])
    if node.get("maintenance"):
        reason = node.get("maintenance_reason") or "no reason given"
        raise ValidationError(
            f"Node {ident} is in maintenance ({reason}): Ironic does not service nodes "
            "in maintenance; ask an operator to end it first", node_id=node["uuid"])
    deploy = node.get("deploy_interface")
    if deploy not in AGENT_DEPLOY_INTERFACES:
        raise ValidationError(
            f"Node {ident} has deploy interface {deploy!r}, which does not run "
            f"ironic-python-agent service steps: one of "
            f"{', '.join(sorted(AGENT_DEPLOY_INTERFACES))} is needed", node_id=node["uuid"])


def _check_ironic_version(conn: Any) -> None:
    response = _ironic(conn, "GET", "/", "read the Ironic API version", microversion="1.1")
    version = (response.json().get("version") or {}).get("version", "0.0")
    if tuple(int(x) for x in version.split(".")) < tuple(
            int(x) for x in SERVICE_MICROVERSION.split(".")):
        raise ValidationError(
            f"The Bare Metal API is at version {version}, older than "
            f"{SERVICE_MICROVERSION} which added servicing: upgrade Ironic")


def _check_request(name: str, disk_format: str, compression: str, visibility: str | None,
                   properties: Mapping[str, str], timeout: float, shutdown_timeout: float,
                   step_args: Mapping[str, Any]) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ValidationError("The image name must be 1 to 255 characters")
    if disk_format not in DISK_FORMATS:
        raise ValidationError(f"Invalid disk format {disk_format!r}: use qcow2 or raw")
    if visibility is not None and visibility not in VISIBILITIES:
        raise ValidationError(f"Invalid visibility {visibility!r}: use one of "
                              f"{', '.join(VISIBILITIES)}")
    for key, value in properties.items():
        if key in RESERVED_PROPERTIES or key.startswith("snapshot_"):
            raise ValidationError(
                f"Property {key} cannot be set: Glance or the snapshot step owns it")
        if not isinstance(value, str):
            raise ValidationError(f"Property {key} must be a string")
    if timeout <= 0 or shutdown_timeout <= 0:
        raise ValidationError("Timeouts must be positive numbers of seconds")
    unknown = sorted(set(step_args) - PASSTHROUGH_STEP_ARGS)
    if unknown:
        raise ValidationError(f"Unknown step arguments: {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(PASSTHROUGH_STEP_ARGS))}")
    # The values too, by the engine's own rules: the step would refuse them
    # only after the OS was shut down and the ramdisk booted.
    try:
        _engine.check_options(format=disk_format, compression=compression,
                              level=step_args.get("compression_level"),
                              cluster_size=step_args.get("cluster_size"),
                              threads=step_args.get("threads"),
                              memory_limit=step_args.get("memory_limit"))
    except InvalidInputError as exc:
        raise ValidationError(f"{exc}: nothing was changed on the node") from None


def _glance_endpoint(conn: Any, override: str | None) -> str:
    if override:
        if not override.startswith(("http://", "https://")):
            raise ValidationError(f"Invalid Glance endpoint {override!r}: give an http:// "
                                  "or https:// URL")
        return normalise_endpoint(override)
    try:
        endpoint = conn.image.get_endpoint()
    except ks_exc.ClientException as exc:
        endpoint = None
        LOG.debug("No image endpoint: %s", exc)
    if not endpoint:
        raise ValidationError(
            "No image service (Glance) endpoint in the catalog for your region and "
            "interface: pass the endpoint the node's agent should upload to")
    return normalise_endpoint(endpoint)


# -- the workflow -------------------------------------------------------------------------


class _Run:
    """State of one snapshot run, for progress and cleanup."""

    def __init__(self, conn: Any, progress: Callable[[Progress], None] | None) -> None:
        self.conn = conn
        self.start = time.monotonic()
        self.progress = progress
        self.node_id = ""
        self.image_id: str | None = None
        self.credential: cred.UploadCredential | None = None
        self.powered_off = False
        self.serviced = False

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def report(self, phase: str, state: str | None, image_status: str | None) -> None:
        if self.progress is not None:
            self.progress(Progress(phase, self.node_id, state, image_status, self.elapsed()))


def _soft_power_off(run: _Run, node: dict[str, Any], timeout: float, poll: float) -> None:
    ident = node.get("name") or node["uuid"]
    if node.get("power_state") == "power off":
        return
    _ironic(run.conn, "PUT", f"/nodes/{node['uuid']}/states/power",
            f"ask node {ident} to power off softly", error=ShutdownError,
            microversion=SOFT_POWER_MICROVERSION,
            json={"target": "soft power off", "timeout": int(timeout)})
    run.powered_off = True
    deadline = time.monotonic() + timeout + 60
    while True:
        record = _node(run.conn, node["uuid"])
        run.report("shutdown", record.get("provision_state"), None)
        if not record.get("target_power_state"):
            if record.get("power_state") == "power off":
                return
            raise ShutdownError(
                f"Node {ident} did not power off cleanly within {int(timeout)} s "
                f"({redact(record.get('last_error')) or 'no error recorded'}): its OS may be hung "
                "or ignore ACPI; retry with a longer shutdown timeout, or without a clean "
                "shutdown to accept a crash-consistent disk", node_id=node["uuid"])
        if time.monotonic() > deadline:
            raise ShutdownError(f"Node {ident} is still powering off after "
                                f"{int(timeout) + 60} s: check its power interface",
                                node_id=node["uuid"])
        time.sleep(poll)


def _verify(run: _Run, image: dict[str, Any] | None, node_id: str, image_id: str
            ) -> SnapshotResult:
    """Checks the finished image against the report the step wrote on it."""
    if image is None:
        raise VerificationFailedError(f"Image {image_id} no longer exists in Glance",
                                      image_id=image_id, node_id=node_id)
    if image.get("status") != "active":
        raise VerificationFailedError(
            f"Node {node_id} is active again but image {image_id} is {image.get('status')}: "
            "the agent did not upload it; see the node's last_error and the agent log",
            image_id=image_id, node_id=node_id)
    missing = [key for key in ("snapshot_sha512", "snapshot_md5", "snapshot_image_size")
               if key not in image]
    if missing:
        raise VerificationFailedError(
            f"Image {image_id} is active but has no snapshot report ({', '.join(missing)} "
            "missing): it was not written by the snapshot_disk step", image_id=image_id,
            node_id=node_id)
    problems = []
    if image.get("os_hash_algo") == "sha512" and image.get("os_hash_value") != image[
            "snapshot_sha512"]:
        problems.append("Glance's sha512 differs from the step's")
    if image.get("checksum") and image["checksum"] != image["snapshot_md5"]:
        problems.append("Glance's md5 checksum differs from the step's")
    if str(image.get("size")) != image["snapshot_image_size"]:
        problems.append(f"Glance stores {image.get('size')} bytes, the step sent "
                        f"{image['snapshot_image_size']}")
    if image.get("snapshot_node") not in (None, node_id):
        problems.append(f"the report names node {image.get('snapshot_node')}")
    if problems:
        raise VerificationFailedError(
            f"Image {image_id} does not match the snapshot report: {'; '.join(problems)}",
            image_id=image_id, node_id=node_id)

    def number(key: str, kind: Callable[[str], Any]) -> Any:
        try:
            return kind(image[key]) if key in image else None
        except ValueError:
            return None

    return SnapshotResult(
        image_id=image_id, image_name=image.get("name") or "", node_id=node_id,
        status="active", disk_format=image.get("disk_format") or "",
        compression=image.get("snapshot_compression"), size=image.get("size"),
        virtual_size=number("snapshot_virtual_size", int), sha256=image.get("snapshot_sha256"),
        sha512=image.get("os_hash_value"), md5=image.get("checksum"),
        capture_seconds=number("snapshot_seconds", float),
        elapsed_seconds=round(run.elapsed(), 1))


def _finish(run: _Run, ident: str, timeout: float, poll: float) -> SnapshotResult:
    """Follows the step to its end and checks the image.

    Normally the step verified the image and recorded its report, and this
    checks them. When the caller's token expired during the capture, the
    step fails after Glance stored the data, with the report in its message
    (:mod:`ironic_snapshot.stored`): then the image is verified here, with
    the caller's own session, the report recorded and the node brought back
    to ``active`` (:func:`_verify_stored`).
    """
    assert run.image_id is not None
    try:
        _follow(run, ident, timeout, poll)
    except StepFailedError as exc:
        found = stored.parse(exc.last_error)
        if found is None or found[0] != run.image_id:
            raise
        return _verify_stored(run, ident, found[1], poll)
    run.report("verify", "active", None)
    return _verify(run, _image(run.conn, run.image_id), run.node_id, run.image_id)


def _verify_stored(run: _Run, ident: str, report: dict[str, str], poll: float
                   ) -> SnapshotResult:
    """Verifies an image the step stored but could not verify; records its report.

    :param report: the ``snapshot_*`` properties from the step's message.
    :raises VerificationFailedError: Glance's size or digests differ from
        the report (the caller's cleanup then deletes the image).
    """
    assert run.image_id is not None
    image_id = run.image_id
    LOG.warning("The step's token expired after Glance stored image %s: verifying it "
                "here against the step's report", image_id)
    run.report("verify", "service failed", None)
    image = _image(run.conn, image_id)
    # Glance's fields against the report, before anything is recorded.
    _verify(run, None if image is None else {**image, **report}, run.node_id, image_id)
    patch = [{"op": "add", "path": f"/{key}", "value": value}
             for key, value in sorted(report.items()) if key.startswith("snapshot_")]
    _call(run.conn.image, "PATCH", f"/images/{image_id}",
          f"record the snapshot report on image {image_id}", ImageError,
          headers={"Content-Type": PATCH_MEDIA_TYPE}, json=patch)
    result = _verify(run, _image(run.conn, image_id), run.node_id, image_id)
    notes = _restore_node(run, poll)
    run.serviced = run.powered_off = False
    if notes:
        # The image is good: keep it, whatever happens to the node.
        run.image_id = None
        raise StepFailedError(
            f"Image {image_id} is verified and kept, but node {ident} could not be brought "
            f"back: {'; '.join(notes)}", image_id=image_id, node_id=run.node_id)
    LOG.info("Image %s verified by the client; node %s is active again", image_id, ident)
    return result


def _restore_node(run: _Run, poll: float) -> list[str]:
    """Aborts a failed or waiting service back to ``active`` and powers the
    node on again if this run powered it off; returns what could not be done."""
    notes: list[str] = []
    conn = run.conn
    if run.serviced:
        try:
            record = _node(conn, run.node_id)
            if (record.get("provision_state") == "service failed" and record.get("maintenance")
                    and record.get("fault") == SERVICE_FAILURE_FAULT):
                # Ironic puts a node whose service step failed or timed out in
                # maintenance (fault "service failure") and refuses to abort
                # it there. That maintenance is this run's doing, not an
                # operator's (theirs has no such fault): end it, then abort.
                _ironic(conn, "DELETE", f"/nodes/{run.node_id}/maintenance",
                        f"end the maintenance Ironic set on node {run.node_id} when its "
                        "service failed")
            if record.get("provision_state") in ("service failed", "service wait"):
                _ironic(conn, "PUT", f"/nodes/{run.node_id}/states/provision",
                        f"abort the service of node {run.node_id}", json={"target": "abort"})
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    record = _node(conn, run.node_id)
                    if record.get("provision_state") == "active" and not record.get(
                            "target_provision_state"):
                        break
                    time.sleep(poll)
                else:
                    notes.append(f"node {run.node_id} did not return to active after abort "
                                 f"(it is {record.get('provision_state')})")
            elif record.get("provision_state") != "active":
                notes.append(f"node {run.node_id} is {record.get('provision_state')} and "
                             "cannot be aborted now: check it later")
        except SnapshotClientError as exc:
            notes.append(f"node {run.node_id} could not be aborted: {exc}")
    if run.powered_off:
        try:
            record = _node(conn, run.node_id)
            if (record.get("provision_state") == "active" and not record.get(
                    "target_provision_state") and record.get("power_state") == "power off"):
                _ironic(conn, "PUT", f"/nodes/{run.node_id}/states/power",
                        f"power node {run.node_id} on again", json={"target": "power on"})
        except SnapshotClientError as exc:
            notes.append(f"node {run.node_id} could not be powered on again: {exc}")
    return notes


def _cleanup(run: _Run, keep_image: bool, poll: float) -> list[str]:
    """Undoes what the run did; returns what could not be undone."""
    notes = _restore_node(run, poll)
    conn = run.conn
    if run.image_id and not keep_image:
        try:
            _call(conn.image, "DELETE", f"/images/{run.image_id}",
                  f"delete image {run.image_id}", ImageError)
        except SnapshotClientError as exc:
            if "HTTP 404" not in str(exc):
                notes.append(f"image {run.image_id} could not be deleted: {exc}")
    if run.credential is not None:
        try:
            cred.delete_upload_credential(conn, run.credential)
        except SnapshotClientError as exc:
            notes.append(f"credential {run.credential.id} could not be deleted (it expires "
                         f"at {run.credential.expires_at}): {exc}")
    return notes


def _start_service(run: _Run, record: dict[str, Any], *, endpoint: str, disk_format: str,
                   compression: str, timeout: float, clean_shutdown: bool,
                   shutdown_timeout: float, device: str | None, step_args: Mapping[str, Any],
                   poll: float) -> cred.UploadCredential:
    """Shuts the node down cleanly, mints the upload credential and starts the step.

    The part of a snapshot after the image exists (``run.image_id``), shared
    by :func:`snapshot_node` and the Nova driver (:mod:`ironic_snapshot.nova`):
    sets ``run.powered_off``, ``run.credential`` and ``run.serviced`` as it
    goes, so that :func:`_cleanup` undoes exactly what was done.

    :returns: the upload credential, to delete once the snapshot is verified.
    """
    assert run.image_id is not None
    ident = record.get("name") or record["uuid"]
    if clean_shutdown:
        _soft_power_off(run, record, shutdown_timeout, poll)

    # Minted only now: a Keystone token lives at most [token] expiration
    # (1 h by default) and the step needs it until its upload starts, so
    # the clean shutdown must not eat into that.
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=timeout)
    credential = run.credential = cred.create_upload_credential(
        run.conn, run.image_id, endpoint=endpoint, expires_at=expires)

    args: dict[str, Any] = {"image_id": run.image_id, "glance_endpoint": endpoint,
                            "auth_token": credential.token,
                            "disk_format": disk_format, **step_args}
    if disk_format == "qcow2":
        args["compression"] = compression
    if device:
        args["device"] = device
    _ironic(run.conn, "PUT", f"/nodes/{run.node_id}/states/provision",
            f"start servicing node {ident}", error=StepFailedError,
            json={"target": "service", "service_steps": [
                {"interface": "deploy", "step": STEP, "args": args}]})
    run.serviced = True
    LOG.info("Node %s is servicing: step %s into image %s", ident, STEP, run.image_id)
    return credential


def snapshot_node(
    conn: Any,
    node: str | None = None,
    *,
    name: str,
    server: str | None = None,
    disk_format: str = "qcow2",
    compression: str = "zstd",
    visibility: str | None = None,
    properties: Mapping[str, str] | None = None,
    wait: bool = True,
    timeout: float = 3600,
    clean_shutdown: bool = True,
    shutdown_timeout: float = 300,
    keep_failed: bool = False,
    device: str | None = None,
    glance_endpoint: str | None = None,
    step_args: Mapping[str, Any] | None = None,
    poll_interval: float = 2.0,
    progress: Callable[[Progress], None] | None = None,
) -> SnapshotResult:
    """Snapshots a node's disk into a new Glance image, like ``server image create``.

    :param conn: an ``openstack.connection.Connection`` of the caller; the
        image belongs to its project.
    :param node: the node's name or UUID (or give ``server``).
    :param name: the image name.
    :param server: the server (instance) the node hosts, by UUID or name.
    :param disk_format: ``qcow2`` (compressed, sparse) or ``raw``.
    :param compression: qcow2 cluster compression: ``zstd``, ``zlib`` or ``none``.
    :param visibility: Glance visibility; Glance's default (``shared``) when None.
    :param properties: extra image properties.
    :param wait: wait for the outcome; with False return once Ironic accepted
        the service request (see :func:`get_snapshot`).
    :param timeout: seconds the whole snapshot may take, and the lifetime of
        the upload credential. The token handed to the step is minted after
        the power-off and lives at most Keystone's ``[token] expiration``
        (1 h by default): the step must start its upload within it (ramdisk
        boot plus, for qcow2, one read of the whole disk). The upload may
        outlast it: the image is then verified here (:func:`_finish`).
    :param clean_shutdown: ask the OS to power off first (soft power off).
    :param shutdown_timeout: seconds the OS gets to power off.
    :param keep_failed: keep the image of a failed snapshot (for debugging).
    :param device: the disk to capture, such as ``/dev/sda``; the node's root
        device by default.
    :param glance_endpoint: the Glance endpoint the agent uploads to; the
        catalog's by default.
    :param step_args: more ``snapshot_disk`` arguments (``compression_level``,
        ``cluster_size``, ``threads``, ``memory_limit``, ``skip_free_space``, ``insecure``).
    :param poll_interval: seconds between two looks at the node.
    :param progress: called with a :class:`Progress` at every look.
    :returns: the verified snapshot (``status`` ``active``), or with
        ``wait=False`` the started one (``status`` ``running``).
    :raises ValidationError: a check failed; nothing was changed.
    :raises SnapshotClientError: a later failure (subclass says which); what
        was created was removed and the node brought back to ``active``
        where possible, as the message says.
    """
    properties = dict(properties or {})
    step_args = dict(step_args or {})
    _check_request(name, disk_format, compression, visibility, properties, timeout,
                   shutdown_timeout, step_args)
    if device is not None and not (isinstance(device, str) and device.startswith("/dev/")):
        raise ValidationError(f"Invalid device {device!r}: give a path such as /dev/sda")
    run = _Run(conn, progress)
    record = find_node(conn, node, server)
    run.node_id = record["uuid"]
    check_node(record)
    _check_ironic_version(conn)
    endpoint = _glance_endpoint(conn, glance_endpoint)
    ident = record.get("name") or record["uuid"]

    try:
        body: dict[str, Any] = {"name": name, "disk_format": disk_format,
                                "container_format": "bare", **properties,
                                # Lets get_snapshot find the node later.
                                "snapshot_node": run.node_id}
        if visibility:
            body["visibility"] = visibility
        image = _call(conn.image, "POST", "/images", "create the image", ImageError,
                      json=body).json()
        run.image_id = image["id"]
        LOG.info("Created image %s (queued) for the snapshot of node %s", run.image_id, ident)
        credential = _start_service(run, record, endpoint=endpoint, disk_format=disk_format,
                                    compression=compression, timeout=timeout,
                                    clean_shutdown=clean_shutdown,
                                    shutdown_timeout=shutdown_timeout, device=device,
                                    step_args=step_args, poll=poll_interval)
        if not wait:
            return SnapshotResult(image_id=run.image_id, image_name=name, node_id=run.node_id,
                                  status="running", disk_format=disk_format,
                                  compression=compression if disk_format == "qcow2" else None,
                                  elapsed_seconds=round(run.elapsed(), 1),
                                  glance_endpoint=endpoint)
        result = _finish(run, ident, timeout, poll_interval)
    except KeyboardInterrupt:
        # The node goes on servicing: deleting the image or credential now
        # would only make it fail. Tell the caller how to follow it.
        LOG.warning("Interrupted: the snapshot of node %s into image %s goes on; check it "
                    "with get_snapshot / 'baremetal snapshot show %s'", ident, run.image_id,
                    run.image_id)
        raise
    except SnapshotClientError as exc:
        notes = _cleanup(run, keep_failed, poll_interval)
        what = []
        if run.image_id:
            what.append(f"image {run.image_id} " + ("kept" if keep_failed else "deleted"))
        if run.credential is not None:
            what.append("upload credential deleted")
        if run.serviced:
            what.append(f"node {ident} aborted back to active")
        summary = str(exc)
        if what and not notes:
            summary += f" ({', '.join(what)})"
        if notes:
            summary += ". Cleanup incomplete: " + "; ".join(notes)
        exc.args = (summary,)
        exc.image_id = exc.image_id or run.image_id
        exc.node_id = exc.node_id or run.node_id
        raise
    cleanup_notes = []
    try:
        cred.delete_upload_credential(conn, credential)
        run.credential = None
    except SnapshotClientError as exc:
        cleanup_notes.append(str(exc))
        LOG.warning("The snapshot succeeded but its upload credential could not be deleted "
                    "(it expires at %s): %s", credential.expires_at, exc)
    return dataclasses.replace(result, glance_endpoint=endpoint,
                               elapsed_seconds=round(run.elapsed(), 1))


def _follow(run: _Run, ident: str, timeout: float, poll: float) -> None:
    """Waits for the node to return to ``active`` from servicing."""
    deadline = run.start + timeout
    seen_service = False
    accepted = time.monotonic()
    while True:
        # A snapshot runs for many minutes: one busy moment of Ironic's
        # database must not abort it.
        record = _node(run.conn, run.node_id, attempts=NODE_READ_ATTEMPTS, pause=poll)
        state, target = record.get("provision_state"), record.get("target_provision_state")
        image = None
        if run.image_id:
            try:
                image = _image(run.conn, run.image_id)
            except ImageError as exc:
                # The node says how the step goes; the image only shows
                # progress. A Glance down for a moment (restarted, or
                # killed under the step's upload, which then fails) must
                # not end the follow with the node still servicing, where
                # it could not be aborted.
                LOG.warning("Following the snapshot of node %s: %s", ident, exc)
        run.report("service", state, image.get("status") if image else None)
        if state in SERVICE_STATES:
            seen_service = True
        if state == "service failed":
            raise StepFailedError(
                f"Snapshot of node {ident} failed: "
                f"{redact(record.get('last_error')) or 'no error given'}",
                last_error=redact(record.get("last_error")), image_id=run.image_id,
                node_id=run.node_id)
        if state == "active" and not target:
            if seen_service or (image and image.get("status") == "active"):
                return
            if time.monotonic() - accepted > 60:
                raise StepFailedError(
                    f"Ironic accepted the service request but node {ident} did not start "
                    f"servicing within 60 s ({redact(record.get('last_error')) or 'no error'})",
                    image_id=run.image_id, node_id=run.node_id)
        elif state not in SERVICE_STATES and state != "active":
            raise StepFailedError(
                f"Node {ident} went to {state} while servicing: "
                f"{redact(record.get('last_error')) or 'no error given'}",
                last_error=redact(record.get("last_error")), image_id=run.image_id,
                node_id=run.node_id)
        if time.monotonic() > deadline:
            raise SnapshotTimeoutError(
                f"Snapshot of node {ident} did not finish within {int(timeout)} s (node is "
                f"{state}): raise the timeout for large disks", image_id=run.image_id,
                node_id=run.node_id)
        time.sleep(poll)


def get_snapshot(conn: Any, image_id: str, *, cleanup: bool = True) -> SnapshotStatus:
    """The outcome of a snapshot started with ``wait=False`` (or of any snapshot).

    :param conn: an ``openstack.connection.Connection``.
    :param image_id: the snapshot's Glance image id.
    :param cleanup: once the snapshot is finished, delete its upload
        credential if it still exists (it can do nothing useful any more).
    :returns: the state, with the verified figures when it succeeded.
    :raises ImageError: the image cannot be read (or does not exist).
    :raises ValidationError: the image is not a node snapshot.
    """
    image = _image(conn, image_id)
    if image is None:
        raise ImageError(f"Image {image_id} not found in Glance: a failed snapshot's image "
                         "is deleted, or the id is wrong", image_id=image_id)
    node_id = image.get("snapshot_node")
    if not node_id:
        raise ValidationError(f"Image {image_id} is not a node snapshot (it has no "
                              "snapshot_node property)", image_id=image_id)
    status = image.get("status")
    record: dict[str, Any] = {}
    try:
        record = _node(conn, node_id)
    except NodeNotFoundError:
        pass
    state = record.get("provision_state")
    step = record.get("service_step") or {}
    running_here = (state in SERVICE_STATES and
                    (not step or (step.get("args") or {}).get("image_id") in (None, image_id)))
    outcome: SnapshotStatus
    if status == "active" and "snapshot_sha512" in image and not running_here:
        try:
            result = _verify(_Run(conn, None), image, node_id, image_id)
        except VerificationFailedError as exc:
            outcome = SnapshotStatus("failed", image_id, node_id, str(exc), status, state)
        else:
            result = dataclasses.replace(result, elapsed_seconds=None)
            outcome = SnapshotStatus("succeeded", image_id, node_id,
                                     f"Image {image_id} is active and matches the report",
                                     status, state, result=result)
    elif running_here or (state == "active" and record.get("target_provision_state")):
        outcome = SnapshotStatus("running", image_id, node_id,
                                 f"Node {node_id} is {state}, image {image_id} is {status}",
                                 status, state)
    else:
        last_error = redact(record.get("last_error"))
        if state == "service failed":
            message = f"Snapshot failed: {last_error or 'no error given'}"
        elif not record:
            message = f"Node {node_id} is not visible any more and image {image_id} is {status}"
        else:
            message = (f"Snapshot did not complete: image {image_id} is {status} and node "
                       f"{node_id} is {state}" + (f" ({last_error})" if last_error else ""))
        outcome = SnapshotStatus("failed", image_id, node_id, message, status, state,
                                 last_error=last_error)
    if cleanup and outcome.state != "running":
        try:
            cred.delete_credentials_of_image(conn, image_id)
        except SnapshotClientError as exc:
            LOG.warning("The upload credential of image %s could not be deleted: %s",
                        image_id, exc)
    return outcome

