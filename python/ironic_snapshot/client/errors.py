"""Errors of the snapshot client (:mod:`ironic_snapshot.client`).

Every failure of :func:`~ironic_snapshot.client.snapshot_node` and
:func:`~ironic_snapshot.client.get_snapshot` is a :class:`SnapshotClientError`;
the subclass says at which stage it failed, which tells a script what was
changed: nothing (:class:`ValidationError`), or a node that was shut down or
serviced (the others, whose message says what was cleaned up).
"""

from __future__ import annotations

__all__ = [
    "CredentialError",
    "ImageError",
    "NodeNotFoundError",
    "ShutdownError",
    "SnapshotClientError",
    "StepFailedError",
    "SnapshotTimeoutError",
    "ValidationError",
    "VerificationFailedError",
]


class SnapshotClientError(Exception):
    """Base class of every error of the snapshot client.

    :ivar image_id: the Glance image of the snapshot, if one was created.
    :ivar node_id: the node's UUID, once it was found.
    """

    def __init__(self, message: str, *, image_id: str | None = None,
                 node_id: str | None = None) -> None:
        super().__init__(message)
        self.image_id = image_id
        self.node_id = node_id


class ValidationError(SnapshotClientError, ValueError):
    """A check before anything changed failed; the node, Glance and Keystone are untouched."""


class NodeNotFoundError(ValidationError, LookupError):
    """No node (or no node hosting the server) visible to the caller."""


class ImageError(SnapshotClientError):
    """Glance refused or could not be reached to create, read or delete the image."""


class CredentialError(SnapshotClientError):
    """Keystone refused to create the upload credential or a token from it."""


class ShutdownError(SnapshotClientError):
    """The instance's operating system did not power off cleanly in time."""


class StepFailedError(SnapshotClientError):
    """Ironic reports that the service (the ``snapshot_disk`` step) failed.

    :ivar last_error: the node's ``last_error``.
    """

    def __init__(self, message: str, *, last_error: str | None = None,
                 image_id: str | None = None, node_id: str | None = None) -> None:
        super().__init__(message, image_id=image_id, node_id=node_id)
        self.last_error = last_error


class SnapshotTimeoutError(SnapshotClientError, TimeoutError):
    """The snapshot did not finish within the timeout."""


class VerificationFailedError(SnapshotClientError):
    """The image is not active, or Glance's digests differ from the step's report."""
