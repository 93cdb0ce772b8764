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
