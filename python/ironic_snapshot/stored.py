"""The report a ``snapshot_disk`` step hands back when it cannot verify a stored image.

With a token given by the caller, the step cannot get another one: when that
token expired during a long capture, Glance holds the data but answers the
step's read-back (or its report's recording) with 401. The step then fails
with a message that says so and carries the ``snapshot_*`` properties it
would have written (sizes and digests, never a token), and the client, which
has a live session of its own, verifies the image against them and records
them. Ironic keeps only the text of a step's error (``last_error``), so the
properties travel as JSON after :data:`MARKER`; :func:`details` writes that
text and :func:`parse` reads it back, one format for both sides.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MARKER", "details", "parse"]

#: Precedes the JSON object of properties at the end of the message.
MARKER = "Snapshot report: "

_PATTERN = re.compile(
    r"Image (?P<image>[0-9A-Za-z_-]+) is stored(?:, not verified by the step| and "
    r"verified, but its report is not recorded by the step): .*?"
    + re.escape(MARKER) + r"(?P<report>\{.*\})", re.DOTALL)

#: Properties the client needs to judge the image.
REQUIRED = ("snapshot_sha512", "snapshot_md5", "snapshot_image_size")


def details(image_id: str, reason: str, properties: dict[str, str], *,
            verified: bool = False) -> str:
    """The step's error message for a stored image it could not verify.

    :param image_id: the Glance image.
    :param reason: why the step could not verify it (no secret in it).
    :param properties: the ``snapshot_*`` properties the step would have written.
    :param verified: the step did verify the image, only recording the
        report failed (the token expired in between).
    :returns: ``Image ID is stored, not verified by the step: REASON. ...
        Snapshot report: {...}``.
    """
    state = ("stored and verified, but its report is not recorded by the step" if verified
             else "stored, not verified by the step")
    return (f"Image {image_id} is {state}: {reason}. The "
            "client that passed the token verifies it and records the report; "
            f"otherwise delete the image or compare it with this report. "
            f"{MARKER}{json.dumps(properties, sort_keys=True)}")


def parse(last_error: str | None) -> tuple[str, dict[str, str]] | None:
    """The image id and properties from a node's ``last_error``.

    :param last_error: the node's ``last_error`` (Ironic wraps the step's
        message in its own text).
    :returns: ``(image_id, properties)``, or ``None`` when ``last_error`` is
        not this failure or its report is incomplete.
    """
    found = _PATTERN.search(last_error or "")
    if found is None:
        return None
    try:
        report: Any = json.loads(found["report"])
    except ValueError:
        return None
    if not isinstance(report, dict) or not all(
            isinstance(report.get(key), str) for key in REQUIRED):
        return None
    return found["image"], {str(k): str(v) for k, v in report.items()}
