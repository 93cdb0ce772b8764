"""A small Ironic client for the scenarios: nodes, the ``service`` verb, runbooks.

Tempest has no baremetal service client of its own, and ironic-tempest-plugin's
predates ``service`` (API 1.87) and runbooks (API 1.92). This one has only the
calls the scenarios make, on tempest's :class:`RestClient` (so it
authenticates, logs and raises like every tempest client).
"""

from __future__ import annotations

import json
import time
from typing import Any

from tempest.lib.common import rest_client
from tempest.lib import exceptions as lib_exc

__all__ = ["BaremetalClient", "MICROVERSION"]

#: Ironic API version of the calls: ``service`` with a runbook needs 1.92,
#: and from 1.108 on (when a runbook's ``disable_ramdisk`` is passed on to
#: ``service``) an Ironic refuses a runbook at a lower one.
MICROVERSION = "1.92"
#: The version used when the Ironic offers it.
PREFERRED_MICROVERSION = (1, 108)

#: States a failed service ends in (Ironic keeps the target set in them).
_FAILED = ("service failed", "error")


class BaremetalClient(rest_client.RestClient):
    """Ironic's ``/v1`` API at :data:`MICROVERSION`."""

    api_version = "v1"

    _microversion: str | None = None

    def get_headers(self, accept_type=None, send_type=None):
        """Tempest's headers plus the Ironic API version."""
        headers = super().get_headers(accept_type, send_type)
        headers["X-OpenStack-Ironic-API-Version"] = self._microversion or MICROVERSION
        return headers

    def negotiate(self) -> str:
        """Picks the API version: :data:`PREFERRED_MICROVERSION` if offered, else 1.92.

        :raises tempest.lib.exceptions.TempestException: the Ironic is older than 1.92.
        """
        if self._microversion is None:
            resp, _ = self.get("")
            newest = tuple(int(p) for p in resp["x-openstack-ironic-api-maximum-version"].split("."))
            if newest < (1, 92):
                raise lib_exc.TempestException(
                    f"Ironic's newest API version is {'.'.join(map(str, newest))}: the "
                    "snapshot scenarios need 1.92 (service with runbooks)")
            self._microversion = ".".join(map(str, min(newest, PREFERRED_MICROVERSION)))
        return self._microversion

    def show_node(self, ident: str) -> dict[str, Any]:
        """The node record."""
        resp, body = self.get(f"nodes/{ident}")
        self.expected_success(200, resp.status)
        return json.loads(body)

    def update_node(self, ident: str, patch: list[dict[str, Any]]) -> dict[str, Any]:
        """Applies a JSON patch to the node."""
        resp, body = self.patch(f"nodes/{ident}", json.dumps(patch))
        self.expected_success(200, resp.status)
        return json.loads(body)

    def set_provision_state(self, ident: str, target: str, **fields: Any) -> None:
        """Asks for a provision state change (``service``, ``abort``...)."""
        resp, _ = self.put(f"nodes/{ident}/states/provision",
                           json.dumps({"target": target, **fields}))
        self.expected_success(202, resp.status)

    def service_node(self, ident: str, *, steps: list[dict[str, Any]] | None = None,
                runbook: str | None = None) -> None:
        """Starts servicing the node with ``steps`` or with ``runbook``."""
        fields: dict[str, Any] = {"service_steps": steps} if runbook is None else {"runbook": runbook}
        self.set_provision_state(ident, "service", **fields)

    def show_runbook(self, ident: str) -> dict[str, Any]:
        """The runbook record."""
        resp, body = self.get(f"runbooks/{ident}")
        self.expected_success(200, resp.status)
        return json.loads(body)

    def wait_settled(self, ident: str, timeout: float, *, after: str | None) -> dict[str, Any]:
        """Waits until the node has left the states of a running service.

        :param after: the node's ``provision_updated_at`` before the request:
            a node whose provision state has not changed since is not done,
            whatever state it is in (Ironic acts on requests asynchronously).
        :raises tempest.lib.exceptions.TimeoutException: not settled in time.
        """
        deadline = time.monotonic() + timeout
        states: list[str] = []
        while True:
            node = self.show_node(ident)
            state = node["provision_state"]
            if not states or states[-1] != state:
                states.append(state)
            changed = node.get("provision_updated_at") != after
            if changed and (state in _FAILED or (
                    state == "active" and not node.get("target_provision_state"))):
                return node
            if time.monotonic() > deadline:
                raise lib_exc.TimeoutException(
                    f"Node {ident} did not settle within {timeout} s: states seen {states}, "
                    f"last_error {node.get('last_error')!r}")
            time.sleep(self.build_interval)
