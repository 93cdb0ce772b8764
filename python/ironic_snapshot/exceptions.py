"""Exceptions raised by :func:`ironic_snapshot.capture`.

Every engine failure is a :class:`SnapshotError`; the subclass says what kind
of failure it is, and each also derives from the built-in exception that fits
so that callers may catch either (``except ValueError`` for bad arguments,
``except OSError`` for disk and output failures).
"""

from __future__ import annotations

__all__ = [
    "CancelledError",
    "InternalError",
    "InvalidInputError",
    "OutputError",
    "SnapshotError",
    "SourceError",
    "UploadError",
    "VerificationError",
]


class SnapshotError(Exception):
    """Base class of every error of the imaging engine.

    :ivar kind: stable lower-case name of the kind of error (``invalid_input``,
        ``source``, ``output``, ``upload``, ``verification``, ``cancelled``,
        ``internal``), set by the engine.
    """

    kind: str = "internal"


class InvalidInputError(SnapshotError, ValueError):
    """Bad argument values; nothing was read or written."""

    kind = "invalid_input"


class SourceError(SnapshotError, OSError):
    """The disk could not be opened or read, or it changed during the capture."""

    kind = "source"


class OutputError(SnapshotError, OSError):
    """The output file or stream could not be created or written."""

    kind = "output"


class UploadError(SnapshotError):
    """The image service refused a request or could not be reached.

    Raised by :func:`~ironic_snapshot.capture`, the image is left in a state
    other than ``active``; raised by ``verify_glance`` it says nothing about
    the image's state.

    :ivar status: the HTTP status Glance answered (401 for an expired or
        refused token), or ``None`` when there was no answer (the service
        could not be reached) or the request was never made.
    """

    kind = "upload"
    status: int | None = None


class VerificationError(SnapshotError):
    """The image service stored something other than what was sent."""

    kind = "verification"


class CancelledError(SnapshotError):
    """The capture was cancelled (for example by the progress callback)."""

    kind = "cancelled"


class InternalError(SnapshotError):
    """A bug in the engine (including a panic); please report it."""

    kind = "internal"
