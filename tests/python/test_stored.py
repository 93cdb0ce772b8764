"""The "stored, not verified by the step" message: written by the step, read by the client."""

from __future__ import annotations

import json

from ironic_snapshot import stored

PROPERTIES = {"snapshot_sha512": "ab" * 64, "snapshot_md5": "cd" * 16,
              "snapshot_image_size": "1234", "snapshot_node": "n-1"}


def _as_ironic_shows_it(details: str) -> str:
    # What Ironic makes of a failed agent step (agent_base: the error's details).
    return f"Service step deploy.snapshot_disk failed on node n-1. {details}"


def test_round_trip_through_last_error() -> None:
    for verified in (False, True):
        text = stored.details("0f1e-2d", "Glance refused the auth_token (HTTP 401)",
                              PROPERTIES, verified=verified)
        assert stored.parse(_as_ironic_shows_it(text)) == ("0f1e-2d", PROPERTIES)
    assert "is stored, not verified by the step: Glance refused" in stored.details(
        "i", "Glance refused", PROPERTIES)


def test_other_errors_and_incomplete_reports_are_not_taken() -> None:
    assert stored.parse(None) is None
    assert stored.parse("Upload of /dev/sda into image x failed, the image is not active") is None
    incomplete = {k: v for k, v in PROPERTIES.items() if k != "snapshot_md5"}
    assert stored.parse(stored.details("i", "r", incomplete)) is None
    broken = stored.details("i", "r", PROPERTIES).replace(json.dumps(
        PROPERTIES, sort_keys=True), "{not json}")
    assert stored.parse(broken) is None
