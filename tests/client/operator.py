"""The operator's side of a runbook snapshot, shared by the runbook and tempest tests.

An operator project and user, an application credential restricted by access
rules to the image calls the step makes, the ``[snapshot]`` section that puts
it into the agent's configuration, and a runbook made with the real
``baremetal runbook create`` and approved for a node by a trait.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .conftest import PASSWORD, Cloud

__all__ = ["ACCESS_RULES", "NAME_TEMPLATE", "Operator", "make_operator", "write_runbook"]

#: What the operator's application credential may do, and nothing more.
ACCESS_RULES = [
    {"service": "image", "method": "POST", "path": "/v2/images"},
    {"service": "image", "method": "GET", "path": "/v2/images/*"},
    {"service": "image", "method": "PUT", "path": "/v2/images/*/file"},
    {"service": "image", "method": "PATCH", "path": "/v2/images/*"},
    {"service": "image", "method": "DELETE", "path": "/v2/images/*"},
]
NAME_TEMPLATE = "runbook-{node_name}-{timestamp}"


class Operator:
    """The operator project, its user and the credential for the agents."""

    def __init__(self, project: str, user: str, credential_id: str, secret: str):
        self.project = project
        self.user = user
        self.credential_id = credential_id
        self.secret = secret

    def agent_conf(self, cloud: Cloud, *, secret: str | None = None) -> dict[str, dict[str, str]]:
        """The ``[snapshot]`` section the operator writes into the agent's config."""
        return {"snapshot": {
            "auth_url": cloud.keystone.auth_url,
            "application_credential_id": self.credential_id,
            "application_credential_secret": secret or self.secret,
            # No glance_endpoint: the step takes it from the token's catalog.
            "interface": "public",
            "image_name_template": NAME_TEMPLATE,
            "image_properties": "purpose:fleet-backup,site:lab1",
        }}


def make_operator(cloud: Cloud) -> Operator:
    """Creates the operator project, its user and the agents' credential."""
    keystone = cloud.keystone
    project = keystone.create_project("snapshots")
    user = keystone.create_user("snapshot-operator", PASSWORD, project=project, role="member")
    token = keystone.password_token("snapshot-operator", PASSWORD, project="snapshots")
    body = keystone.api("POST", f"/v3/users/{user}/application_credentials", {
        "application_credential": {
            "name": "ironic-snapshot-agents",
            "description": "Agents of the snapshot runbook: image calls only",
            "unrestricted": False,
            "access_rules": ACCESS_RULES,
        }}, token=token)["application_credential"]
    return Operator(project, user, body["id"], body["secret"])


def write_runbook(cloud: Cloud, node: str, name: str, args: dict[str, Any],
                  folder: Path) -> dict[str, Any]:
    """Creates runbook ``name`` with the real CLI and approves ``node`` for it."""
    steps = folder / f"{name}.json"
    steps.write_text(json.dumps([{"interface": "deploy", "step": "snapshot_disk",
                                  "args": args, "order": 1}]))
    if cloud.ironic.cli("runbook", "list", "-f", "value", "-c", "Name").split().count(name):
        cloud.ironic.cli("runbook", "delete", name)
    book = json.loads(cloud.ironic.cli("runbook", "create", "--name", name,
                                       "--steps", str(steps), "-f", "json"))
    # From API 1.112 a runbook lists the traits approving nodes; before, its
    # name must be one of the node's traits. Do both.
    cloud.ironic.cli("runbook", "trait", "add", name, name, check=False)
    cloud.ironic.cli("node", "add", "trait", node, name)
    return book
