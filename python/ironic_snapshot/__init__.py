"""ironic-snapshot: capture a bare-metal node's disk into a cloud image.

:func:`capture` streams a disk, opened read-only, into a compressed qcow2 (or
raw) image in a file, on standard output or straight into a Glance image, and
returns a report with sizes and digests. Failures raise a subclass of
:class:`SnapshotError`.

The Rust engine is loaded on first use of :func:`capture` so that the
ironic-python-agent hardware manager can import this package, find the engine
missing and say so instead of failing to load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ironic_snapshot.exceptions import (
    CancelledError,
    InternalError,
    InvalidInputError,
    OutputError,
    SnapshotError,
    SourceError,
    UploadError,
    VerificationError,
)

if TYPE_CHECKING:
    from ironic_snapshot._engine import VERSION as __version__
    from ironic_snapshot._engine import capture, check_options

__all__ = [
    "CancelledError",
    "InternalError",
    "InvalidInputError",
    "OutputError",
    "SnapshotError",
    "SourceError",
    "UploadError",
    "VerificationError",
    "__version__",
    "capture",
    "check_options",
]


def __getattr__(name: str) -> Any:
    # Lazy re-export of the extension's names (PEP 562).
    if name not in ("capture", "check_options", "__version__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ironic_snapshot import _engine

    value: Any = _engine.VERSION if name == "__version__" else getattr(_engine, name)
    globals()[name] = value
    return value
