"""Snapshot a bare-metal node in one call, from a script or the command line.

:func:`snapshot_node` does what ``openstack baremetal node snapshot`` does:
checks, a clean shutdown of the instance's OS, a queued Glance image created
as the caller, a Keystone application credential that can do nothing but this
one upload, Ironic's ``service`` with the ``snapshot_disk`` step, and the
verification of the finished image::

    import openstack
    from ironic_snapshot.client import snapshot_node

    conn = openstack.connect(cloud="mycloud")
    result = snapshot_node(conn, "node-17", name="exp-42-final")
    print(result.image_id, result.size, result.sha256)

:func:`get_snapshot` tells the outcome of a snapshot started with
``wait=False``. Needs ``openstacksdk`` (``pip install ironic-snapshot[client]``).
"""

from __future__ import annotations

from ironic_snapshot.client.errors import (
    CredentialError,
    ImageError,
    NodeNotFoundError,
    ShutdownError,
    SnapshotClientError,
    SnapshotTimeoutError,
    StepFailedError,
    ValidationError,
    VerificationFailedError,
)
from ironic_snapshot.client.workflow import (
    Progress,
    SnapshotResult,
    SnapshotStatus,
    get_snapshot,
    snapshot_node,
)

__all__ = [
    "CredentialError",
    "ImageError",
    "NodeNotFoundError",
    "Progress",
    "ShutdownError",
    "SnapshotClientError",
    "SnapshotResult",
    "SnapshotStatus",
    "SnapshotTimeoutError",
    "StepFailedError",
    "ValidationError",
    "VerificationFailedError",
    "get_snapshot",
    "snapshot_node",
]
