"""Errors of the ``snapshot_disk`` step, as ironic-python-agent REST errors.

Ironic records the error an agent step raises in the node's ``last_error``:
each message says what went wrong and what the operator can do.
"""

from __future__ import annotations

from ironic_python_agent import errors


class SnapshotStepError(errors.RESTError):
    """Base class of the step's own errors."""

    message = "Disk snapshot failed"

    def __init__(self, details: str) -> None:
        super().__init__(details)


class ImageServiceError(SnapshotStepError):
    """The image service refused a request or could not be reached.

    :ivar status: the HTTP status of Glance's answer, or ``None`` when it
        could not be reached.
    """

    message = "Disk snapshot failed: image service error"

    def __init__(self, details: str, status: int | None = None) -> None:
        super().__init__(details)
        self.status = status


class ImageStoredUnverifiedError(SnapshotStepError):
    """Glance holds the upload but refused the caller's token afterwards.

    A token given by the caller (``auth_token``) expired during the capture:
    the step could neither read the image back nor record its report. The
    details (:func:`ironic_snapshot.stored.details`) carry the report, so
    that the client verifies the image itself.
    """

    message = "Disk snapshot failed: image stored, not verified by the step"


class ImageVerificationError(SnapshotStepError):
    """The image service stored something other than what was sent."""

    message = "Disk snapshot failed: image verification error"


class SnapshotEngineError(SnapshotStepError):
    """The imaging engine failed for a reason not covered by IPA's errors."""

    message = "Disk snapshot failed: imaging engine error"


class IdentityServiceError(SnapshotStepError):
    """Keystone refused the agent's configured credential or could not be reached."""

    message = "Disk snapshot failed: identity service error"
