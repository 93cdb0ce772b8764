"""Nova compute driver: Nova's Ironic driver plus ``snapshot`` through ``snapshot_disk``.

``openstack server image create`` (and ``server backup create``) on a
bare-metal server reaches :meth:`IronicDriver.snapshot` in nova-compute with
the user's token in the request context. The driver then does what the
``baremetal node snapshot`` command does, with the same code
(:mod:`ironic_snapshot.client.workflow`): two sides act on the user's behalf,

- the user's side (the request context's token) for Glance and Keystone: the
  image belongs to the user's project and the upload credential is the
  user's own, restricted to this one image;
- Nova's side (its ``[ironic]`` service connection) for Ironic: under
  Ironic's default policy a project member cannot ``service`` a node.

It follows Nova's contract of a driver snapshot (as the libvirt driver does):
task state ``image_pending_upload``, then ``image_uploading``; every failure
is raised, so that Nova's decorators delete the image and record a fault whose
message is this exception's (which never holds a secret).
"""

from __future__ import annotations

import logging
from typing import Any

from keystoneauth1 import adapter as ks_adapter
from keystoneauth1 import session as ks_session
from keystoneauth1 import token_endpoint
from nova.exception import NovaException
from nova.compute import task_states
from nova.virt.ironic import driver as ironic_driver
from oslo_config import cfg

from ironic_snapshot.client import credential as cred
from ironic_snapshot.client import workflow
from ironic_snapshot.client.errors import (
    CredentialError,
    ImageError,
    SnapshotClientError,
)
from ironic_snapshot.glance import normalise_auth_url, normalise_endpoint
from ironic_snapshot.nova import conf as snapshot_conf

__all__ = ["IronicDriver", "SnapshotFailed"]

LOG = logging.getLogger(__name__)

CONF = cfg.CONF
snapshot_conf.register_opts(CONF)

#: The message of a 403 for a user who logged in with an application credential.
APP_CREDENTIAL_LOGIN = (
    "You are logged in with an application credential, and Keystone does not let an "
    "application credential create another one, which the snapshot needs for its upload: "
    "log in with your password (or another method that is not an application credential) "
    "and retry")


class SnapshotFailed(NovaException):
    """The snapshot of a bare-metal server failed; the message says why and what to do.

    A :class:`~nova.exception.NovaException`, so that Nova records this message
    in the instance fault (for other exceptions it records only the class name).
    """

    msg_fmt = "%(reason)s"


class _UserConnection:
    """What :mod:`ironic_snapshot.client.workflow` needs of a connection.

    ``image`` and ``identity`` act with the user's token (from Nova's request
    context), ``baremetal`` is Nova's own Ironic connection.
    """

    def __init__(self, baremetal: Any, image: Any, identity: Any, user_id: str) -> None:
        self.baremetal = baremetal
        self.image = image
        self.identity = identity
        self.current_user_id = user_id


def _step_value(value: str) -> Any:
    """A ``[ironic_snapshot] step_args`` value (a string) as the step expects it."""
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(lowered)
    except ValueError:
        return value.strip()


def _catalog_url(catalog: list[dict[str, Any]], service_type: str, interface: str) -> str | None:
    """A service's URL in Nova's request catalog.

    keystonemiddleware hands services the catalog in the v2 shape
    (``publicURL``, ``internalURL`` per endpoint); a v3 shape (``interface``
    and ``url``) is read too.
    """
    for service in catalog:
        if service.get("type") != service_type:
            continue
        for endpoint in service.get("endpoints") or []:
            url = endpoint.get(f"{interface}URL")
            if not url and endpoint.get("interface") == interface:
                url = endpoint.get("url")
            if url:
                return str(url)
    return None


def _image_api_endpoint(context: Any, override: str | None) -> str:
    """Where this driver reaches Glance: the user's catalog, else the configured endpoint."""
    catalog = getattr(context, "service_catalog", None) or []
    for interface in ("internal", "public"):
        url = _catalog_url(catalog, "image", interface)
        if url:
            return normalise_endpoint(url)
    if override:
        return normalise_endpoint(override)
    raise SnapshotFailed(reason=(
        "No image service (Glance) endpoint in the request's service catalog: set "
        "[ironic_snapshot] glance_endpoint in nova.conf of the compute service"))


def _logged_in_with_app_credential(identity: Any, token: str) -> bool:
    """Whether ``token`` was issued for an application credential (asks Keystone)."""
    try:
        response = identity.request("/auth/tokens", "GET", raise_exc=False,
                                    headers={"X-Subject-Token": token})
        body = response.json().get("token") or {}
    except Exception:  # noqa: BLE001 - only refines an error message
        return False
    return "application_credential" in (body.get("methods") or []) or bool(
        body.get("application_credential"))


class IronicDriver(ironic_driver.IronicDriver):
    """Nova's Ironic driver whose instances can be snapshotted (``server image create``).

    Enable with ``compute_driver = ironic_snapshot.IronicDriver`` in the
    ``[DEFAULT]`` section of nova-compute's configuration and set
    ``[ironic_snapshot] auth_url``.
    """

    def snapshot(self, context: Any, instance: Any, image_id: str,
                 update_task_state: Any) -> None:
        """Snapshots the instance's node into the (queued) image ``image_id``.

        :param context: the user's request context (its token acts on Glance
            and Keystone).
        :param instance: the instance; ``instance.node`` is its node's UUID.
        :param image_id: the image Nova's API created for the snapshot.
        :param update_task_state: Nova's callback for the task state.
        :raises SnapshotFailed: with what went wrong and what to do; what this
            call changed was undone (node back in ``active``, powered on).
        """
        conf = CONF.ironic_snapshot
        if not conf.auth_url:
            raise SnapshotFailed(reason=(
                "Snapshots of bare-metal servers are not configured: set [ironic_snapshot] "
                "auth_url in nova.conf of the compute service"))
        api_endpoint = _image_api_endpoint(context, conf.glance_endpoint)
        upload_endpoint = normalise_endpoint(conf.glance_endpoint or api_endpoint)
        session = ks_session.Session()
        # The user's token as is, at fixed endpoints (no catalog lookup).
        identity_url = normalise_auth_url(conf.auth_url) + "/v3"
        identity = ks_adapter.Adapter(session, auth=token_endpoint.Token(
            identity_url, context.auth_token), endpoint_override=identity_url)
        image_url = api_endpoint + "/v2"
        image = ks_adapter.Adapter(session, auth=token_endpoint.Token(
            image_url, context.auth_token), endpoint_override=image_url)
        conn = _UserConnection(self.ironic_connection, image, identity, context.user_id)
        try:
            self._snapshot(conn, context, instance, image_id, upload_endpoint,
                           update_task_state)
        except SnapshotClientError as exc:
            message = str(exc)
            if (isinstance(exc, CredentialError) and "HTTP 403" in message
                    and _logged_in_with_app_credential(identity, context.auth_token)):
                message = APP_CREDENTIAL_LOGIN
            LOG.error("Snapshot of instance %s into image %s failed: %s", instance.uuid,
                      image_id, message)
            raise SnapshotFailed(reason=message) from exc

    def _snapshot(self, conn: _UserConnection, context: Any, instance: Any, image_id: str,
                  endpoint: str, update_task_state: Any) -> None:
        conf = CONF.ironic_snapshot
        poll = float(conf.poll_interval)
        run = workflow._Run(conn, None)
        # Nova's image; _cleanup keeps it (Nova deletes it on failure).
        run.image_id = image_id
        record = workflow._node(conn, instance.node)
        run.node_id = record["uuid"]
        if record.get("instance_uuid") != instance.uuid:
            raise SnapshotClientError(
                f"Node {run.node_id} no longer hosts instance {instance.uuid}: nothing "
                "to snapshot", node_id=run.node_id)
        workflow.check_node(record)
        workflow._check_ironic_version(conn)
        ident = record.get("name") or run.node_id
        args: dict[str, Any] = {key: _step_value(value)
                                for key, value in (conf.step_args or {}).items()}
        workflow._check_request("snapshot", conf.disk_format, conf.compression, None, {},
                                conf.timeout, conf.shutdown_timeout, args)

        # Nova creates the image without formats (a VM driver sets them on
        # upload); the agent's upload needs them set, and snapshot_node lets
        # 'baremetal snapshot show' find the node.
        workflow._call(conn.image, "PATCH", f"/images/{image_id}",
                       f"set the disk format of image {image_id}", ImageError,
                       headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
                       json=[{"op": "replace", "path": "/disk_format", "value": conf.disk_format},
                             {"op": "replace", "path": "/container_format", "value": "bare"},
                             {"op": "add", "path": "/snapshot_node", "value": run.node_id}])
        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        try:
            credential = workflow._start_service(
                run, record, endpoint=endpoint, disk_format=conf.disk_format,
                compression=conf.compression, timeout=conf.timeout,
                clean_shutdown=conf.clean_shutdown, shutdown_timeout=conf.shutdown_timeout,
                device=None, step_args=args, poll=poll)
            update_task_state(task_state=task_states.IMAGE_UPLOADING,
                              expected_state=task_states.IMAGE_PENDING_UPLOAD)
            # Verified by the step, or here when its token expired after
            # Glance stored the data.
            workflow._finish(run, ident, conf.timeout, poll)
        except SnapshotClientError as exc:
            # Nova deletes the image; the rest is undone here.
            notes = workflow._cleanup(run, True, poll)
            if notes:
                exc.args = (f"{exc}. Cleanup incomplete: {'; '.join(notes)}",)
            raise
        except Exception:
            workflow._cleanup(run, True, poll)
            raise
        LOG.info("Snapshot of instance %s (node %s) into image %s verified", instance.uuid,
                 ident, image_id)
        problems = []
        try:
            cred.delete_upload_credential(conn, credential)
        except SnapshotClientError as exc:
            problems.append(str(exc))
        if run.powered_off:
            node = workflow._node(conn, run.node_id)
            if node.get("power_state") == "power off" and not node.get("target_power_state"):
                workflow._ironic(conn, "PUT", f"/nodes/{run.node_id}/states/power",
                                 f"power node {ident} on again", json={"target": "power on"})
        for problem in problems:
            LOG.warning("Snapshot into image %s: %s (it expires at %s)", image_id, problem,
                        credential.expires_at)
