"""Errors of the ``snapshot_disk`` step, as ironic-python-agent REST errors.

Ironic records the error an agent step raises in the node's ``last_error``:
each message says what went wrong and what the operator can do.
"""

from __future__ import annotations

try:
    from ironic_python_agent.errors import RESTError
except ImportError:
    # The client and the Nova driver use the URL helpers of
    # ironic_snapshot.glance, which imports this module, where no agent is
    # installed; these errors are raised only inside the agent.
    class RESTError(Exception):  # type: ignore[no-redef]
        """Stand-in for ironic-python-agent's ``RESTError`` where the agent is not installed."""

        message = "An error occurred"

        def __init__(self, details: str | None = None) -> None:
            super().__init__(details or self.message)
            self.details = details


class SnapshotStepError(RESTError):
    """Base class of the step's own errors."""

    message = "Disk snapshot failed"

    def __init__(self, details: str) -> None:
        super().__init__(details)


class ImageServiceError(SnapshotStepError):
    """The image service refused a request or could not be reached."""

    message = "Disk snapshot failed: image service error"


class ImageVerificationError(SnapshotStepError):
    """The image service stored something other than what was sent."""

    message = "Disk snapshot failed: image verification error"


class SnapshotEngineError(SnapshotStepError):
    """The imaging engine failed for a reason not covered by IPA's errors."""

    message = "Disk snapshot failed: imaging engine error"


class IdentityServiceError(SnapshotStepError):
    """Keystone refused the agent's configured credential or could not be reached."""

    message = "Disk snapshot failed: identity service error"
