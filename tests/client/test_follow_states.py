"""The client follows a node through every state Ironic reports while it services,
and through a busy moment of Ironic (HTTP 500 "database is locked").

Ironic reports a running service as ``servicing`` (``service`` is only the
verb) between ``service wait`` phases: right after the request, and after each
agent heartbeat that finishes a step. Whether a poll lands in such a moment
depends on timing (a loaded machine made the end-to-end tests see it), so
this test replays such sequences (tests/client saw ``active``, ``service
wait``, ``servicing``, ``service wait``, ``service failed`` on 2026-12-01,
and the client then reported "went to servicing while servicing").
"""

from __future__ import annotations

from typing import Any

import pytest

from ironic_snapshot.client import workflow


class _Response:
    def __init__(self, body: dict[str, Any], status: int = 200) -> None:
        self.status_code = status
        self._body = body
        self.text = ""

    def json(self) -> dict[str, Any]:
        return self._body


class _Baremetal:
    """Answers GET /nodes/<id> with the next recorded node state."""

    def __init__(self, states: list[tuple[str, str | None]]) -> None:
        self.states = list(states)

    def request(self, url: str, method: str, **kwargs: Any) -> _Response:
        state, target = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if state == "500":
            # What Ironic on sqlite answered under load in tests/client.
            return _Response({"error_message": "(sqlite3.OperationalError) database is "
                              "locked"}, status=500)
        return _Response({"uuid": "n1", "provision_state": state,
                          "target_provision_state": target, "last_error": None})


class _Conn:
    def __init__(self, states: list[tuple[str, str | None]]) -> None:
        self.baremetal = _Baremetal(states)


def test_servicing_between_service_waits_is_followed_to_active() -> None:
    conn = _Conn([("active", "active"), ("service wait", "active"), ("servicing", "active"),
                  ("service wait", "active"), ("servicing", "active"), ("active", None)])
    run = workflow._Run(conn, None)
    run.node_id = "n1"
    workflow._follow(run, "n1", timeout=60, poll=0)
    assert conn.baremetal.states == [("active", None)]


def test_servicing_then_failed_is_reported_as_a_failed_step() -> None:
    conn = _Conn([("servicing", "active"), ("service failed", "active")])
    run = workflow._Run(conn, None)
    run.node_id = "n1"
    try:
        workflow._follow(run, "n1", timeout=60, poll=0)
    except workflow.StepFailedError as exc:
        assert "failed" in str(exc) and "went to servicing" not in str(exc)
    else:
        raise AssertionError("a failed service was not reported")


def test_a_busy_moment_of_ironic_does_not_abort_the_snapshot() -> None:
    conn = _Conn([("service wait", "active"), ("500", None), ("500", None),
                  ("service wait", "active"), ("active", None)])
    run = workflow._Run(conn, None)
    run.node_id = "n1"
    workflow._follow(run, "n1", timeout=60, poll=0)
    assert conn.baremetal.states == [("active", None)]


#: Ironic 39's last_error of a service whose agent never came (seen in
#: tests/nova on 2026-12-02, token shortened): the step with its arguments.
TIMED_OUT = ("Timeout reached while servicing the node. Please check if the ramdisk "
             "responsible for the servicing is running on the node. Failed on step "
             "{'interface': 'deploy', 'step': 'snapshot_disk', 'args': {'image_id': "
             "'2d7e206f-3aac-466a-83e0-cf7740b12d95', 'glance_endpoint': "
             "'http://127.0.0.1:55297', 'auth_token': 'gAAAAABrD3DCgWnXKUjo0p0TRvQ-_', "
             "'disk_format': 'qcow2', 'compression': 'zstd'}, 'abortable': False, "
             "'priority': 0}.")


def test_the_step_arguments_in_last_error_lose_their_secrets() -> None:
    redacted = workflow.redact(TIMED_OUT)
    assert redacted is not None and "gAAAAA" not in redacted
    assert "'auth_token': '***'" in redacted
    assert "'glance_endpoint': 'http://127.0.0.1:55297'" in redacted
    as_json = '{"args": {"auth_token": "gAAAAAxyz", "password": "p", "image_id": "i"}}'
    assert workflow.redact(as_json) == ('{"args": {"auth_token": "***", "password": "***", '
                                        '"image_id": "i"}}')


class _FailedNode:
    """A node Ironic left in ``service failed`` and maintenance, as a timeout does."""

    def __init__(self, fault: str | None) -> None:
        self.record = {"uuid": "n1", "provision_state": "service failed",
                       "target_provision_state": "active", "maintenance": True,
                       "fault": fault, "last_error": TIMED_OUT, "power_state": "power off"}
        self.calls: list[tuple[str, str]] = []

    def request(self, url: str, method: str, **kwargs: Any) -> _Response:
        self.calls.append((method, url))
        if method == "GET":
            return _Response(dict(self.record))
        if url.endswith("/maintenance"):
            self.record.update(maintenance=False, fault=None)
        elif url.endswith("/states/provision"):
            if self.record["maintenance"]:
                # Ironic 39: "Can not abort service on node ... while it is in
                # maintenance mode".
                return _Response({"error_message": "in maintenance"}, status=409)
            self.record.update(provision_state="active", target_provision_state=None)
        return _Response({}, status=202)


def _failed_run(fault: str | None) -> tuple[workflow._Run, _FailedNode]:
    node = _FailedNode(fault)
    conn = type("Conn", (), {"baremetal": node})()
    run = workflow._Run(conn, None)
    run.node_id, run.serviced = "n1", True
    return run, node


def test_the_maintenance_of_a_failed_service_is_ended_before_the_abort() -> None:
    run, node = _failed_run("service failure")
    with pytest.raises(workflow.StepFailedError) as failed:
        workflow._follow(run, "n1", timeout=60, poll=0)
    assert "gAAAAA" not in str(failed.value) and "gAAAAA" not in failed.value.last_error
    assert workflow._cleanup(run, True, poll=0) == []
    assert ("DELETE", "/nodes/n1/maintenance") in node.calls
    assert node.record["provision_state"] == "active"


def test_an_operators_maintenance_is_left_alone() -> None:
    run, node = _failed_run(None)
    notes = workflow._cleanup(run, True, poll=0)
    assert ("DELETE", "/nodes/n1/maintenance") not in node.calls
    assert notes and "could not be aborted" in notes[0], notes


class _GlanceDown:
    """An image service that cannot be reached (killed, restarting)."""

    def request(self, url: str, method: str, **kwargs: Any) -> _Response:
        from keystoneauth1 import exceptions as ks_exc

        raise ks_exc.ConnectFailure("Connection refused")


def test_glance_down_while_servicing_does_not_end_the_follow() -> None:
    # The node, not the image, says how the step goes: with Glance down the
    # follow goes on to the step's outcome (here a failure), so that the
    # node is not left servicing where it could not be aborted.
    conn = _Conn([("service wait", "active"), ("servicing", "active"),
                  ("service failed", "active")])
    conn.image = _GlanceDown()  # type: ignore[attr-defined]
    run = workflow._Run(conn, None)
    run.node_id, run.image_id = "n1", "img-1"
    with pytest.raises(workflow.StepFailedError):
        workflow._follow(run, "n1", timeout=60, poll=0)
    assert conn.baremetal.states == [("service failed", "active")]
