"""Imaging engine of ironic-snapshot (Rust, via PyO3). Private: import from
:mod:`ironic_snapshot` instead."""

from collections.abc import Callable
from os import PathLike
from typing import Any, Final, Literal, TypedDict, type_check_only

__all__ = ["VERSION", "capture", "check_options", "provenance_properties", "verify_glance"]

VERSION: Final[str]
"""Version of the engine, recorded in every report."""

@type_check_only
class ProgressUpdate(TypedDict):
    """What the progress callback receives."""

    phase: Literal["scanning", "sizing", "writing", "sending", "digesting", "verifying"]
    done: int
    total: int
    written: int

def capture(
    source: str | PathLike[str],
    output: str | PathLike[str] | None = None,
    *,
    glance_image: str | None = None,
    glance_endpoint: str | None = None,
    token: str | None = None,
    format: str = "qcow2",
    compression: str = "zstd",
    level: int | None = None,
    cluster_size: int | str = "64K",
    threads: int = 0,
    memory_limit: int | str = "256M",
    skip_free_space: bool = True,
    force: bool = False,
    progress: Callable[[ProgressUpdate], object] | None = None,
    progress_interval: float = 2.0,
    insecure: bool = False,
    ca_file: str | PathLike[str] | None = None,
    verify_upload: bool = True,
    token_source: Callable[[], str] | None = None,
) -> dict[str, Any]:
    """Capture the disk ``source`` (block device or image file, opened
    read-only) into an image.

    The image goes to exactly one of ``output`` (a file path, or ``"-"`` for
    standard output) or the queued Glance image ``glance_image`` on
    ``glance_endpoint``, authenticated with ``token`` (never logged). The GIL
    is released for the whole capture.

    :param format: ``"qcow2"`` or ``"raw"``.
    :param compression: ``"zstd"``, ``"zlib"`` or ``"none"`` (qcow2 only).
    :param level: compression level; ``None`` for the default of the method.
    :param cluster_size: qcow2 cluster size, bytes or a string like ``"64K"``.
    :param threads: compression workers; 0 for one per core.
    :param memory_limit: most compressed bytes held in memory for a
        forward-only destination, bytes or a string like ``"256M"``, or
        ``"auto"`` for half of the memory available now.
    :param skip_free_space: skip free space of known filesystems and swap.
    :param force: overwrite an existing ``output`` file.
    :param progress: called with a :class:`ProgressUpdate` at most every
        ``progress_interval`` seconds (and when a phase starts or ends), from
        an engine thread. An exception it raises cancels the capture and is
        re-raised here.
    :param insecure: skip TLS certificate checks (test clouds only).
    :param ca_file: extra CA bundle (PEM) to trust.
    :param verify_upload: for ``glance_image``, read the image back and
        compare Glance's size and digests with the report before returning
        (an :class:`~ironic_snapshot.VerificationError` when they differ).
        With ``False`` the caller checks them itself with
        :func:`verify_glance`, for example with a newer token: a Keystone
        token can expire during a long capture, after Glance stored the data.
    :param token_source: with ``glance_image`` and ``verify_upload=False``:
        called (from an engine thread, with the GIL) for a new token when
        the upload starts, which for a qcow2 is only once the whole disk has
        been read; ``token`` still checks up front that the image is
        queued. An exception it raises cancels the capture and is re-raised
        here.
    :returns: the report: ``virtual_size``, ``image_size``, ``bytes_read``,
        ``sha256``, ``sha512``, ``md5``, ``seconds``, ``format``,
        ``compression``, ``level``, ``cluster_size``, ``passes``,
        ``clusters``, ``target``, ``tool_version``.
    :raises ironic_snapshot.SnapshotError: a subclass by kind of failure.
    """

def check_options(
    *,
    format: str | None = "qcow2",
    compression: str | None = "zstd",
    level: int | None = None,
    cluster_size: int | str | None = "64K",
    threads: int | None = 0,
    memory_limit: int | str | None = "256M",
) -> None:
    """Check capture options as :func:`capture` would, without capturing.

    Each value is parsed and checked by the engine's own rules, so this
    refuses exactly what a capture would refuse: the snapshot client calls it
    before it shuts a node down, the ``snapshot_disk`` step before it reads
    the disk. ``None`` (or leaving an argument out) means the default.

    :param format: ``"qcow2"`` or ``"raw"``.
    :param compression: ``"zstd"``, ``"zlib"`` or ``"none"``.
    :param level: compression level, in range for the method (zstd: 1 to 22
        or negative; zlib: 1 to 9).
    :param cluster_size: a power of two from 64K to 2M, bytes or a string
        like ``"64K"``.
    :param threads: compression workers, 0 (one per core) up to 1024.
    :param memory_limit: bytes, a string like ``"512M"``, or ``"auto"``.
    :raises ironic_snapshot.InvalidInputError: a value (or its type) is
        wrong; the message names the option and what to use.
    """

def provenance_properties(
    report: dict[str, Any],
    *,
    node: str | None = None,
    device: str | None = None,
    parent_image: str | None = None,
) -> dict[str, str]:
    """The ``snapshot_*`` image properties of a capture, with its provenance record.

    The report's sizes, digests, format, compression, cluster size, seconds
    and tool version, the source (``snapshot_node``, ``snapshot_device``,
    ``snapshot_source_image``), ``snapshot_captured_at`` (now, UTC), and the
    record of all of them: canonical JSON (sorted keys, no spaces) split
    into ``snapshot_provenance_1``, ``_2``... of at most 255 characters,
    whose SHA-256 is ``snapshot_provenance_sha256``. ``ironic-snapshot
    verify`` finds any of these properties edited afterwards. The one
    builder of these properties; the CLI's Glance upload writes the same.

    :param report: a report of :func:`capture`.
    :param node: the Ironic node UUID.
    :param device: the device captured.
    :param parent_image: the image the node was deployed from.
    :returns: property names and string values.
    :raises ironic_snapshot.InvalidInputError: the report is not JSON-able.
    """

def verify_glance(
    glance_image: str,
    *,
    glance_endpoint: str,
    image_size: int,
    md5: str,
    sha256: str,
    sha512: str,
    token: str | None = None,
    insecure: bool = False,
    ca_file: str | PathLike[str] | None = None,
) -> None:
    """Check that the Glance image ``glance_image`` holds exactly what a
    capture sent: status ``active``, ``size`` equal to ``image_size``,
    ``checksum`` equal to ``md5`` and ``os_hash_value`` equal to ``sha512``
    (or ``sha256``, whichever ``os_hash_algo`` names).

    What :func:`capture` does after a Glance upload unless given
    ``verify_upload=False``, with a token of the caller's choice (never
    logged). The GIL is released while Glance is asked.

    :param image_size: ``image_size`` of the capture's report.
    :param md5: ``md5`` of the report.
    :param sha256: ``sha256`` of the report.
    :param sha512: ``sha512`` of the report.
    :param insecure: skip TLS certificate checks (test clouds only).
    :param ca_file: extra CA bundle (PEM) to trust.
    :raises ironic_snapshot.VerificationError: a field differs; the message
        names it with both values.
    :raises ironic_snapshot.UploadError: Glance refused to show the image
        (its ``status`` attribute holds the HTTP status, 401 for an expired
        token) or could not be reached.
    :raises ironic_snapshot.InvalidInputError: a bad endpoint, id, token or
        CA file.
    """
