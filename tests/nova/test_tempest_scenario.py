"""The tempest plugin's server scenario, run by tempest against the Nova cloud.

Tempest from PyPI runs ``ServerImageTest`` (``server image create`` of a
bare-metal server, as the admin) against the session's Nova cloud, whose
compute driver is ironic-snapshot's; a fresh ironic-python-agent starts when
the node waits for one. The scenario itself judges the image (Glance's hashes
against the step's report) and the server and node afterwards; this test
checks that tempest ran it and that it passed, and that nothing was left.
"""

from __future__ import annotations

from pathlib import Path

from tests.nova.conftest import Cloud, Server
from tests.nova.helpers import _agent_env, _app_credentials, _server
from tests.stack import tempest
from tests.stack.ipa import agent_on_demand


def test_server_scenario_passes_against_the_nova_cloud(cloud: Cloud, server: Server,
                                                       tmp_path: Path) -> None:
    workspace = tempest.init_workspace(tmp_path / "tempest")
    tempest.write_conf(workspace, cloud.keystone,
                       {"server": server.id, "service_timeout": "600"}, nova=True)
    images_before = {image["id"] for image in cloud.images()}
    before = server.disk.sha256()
    with agent_on_demand(cloud.ironic, server.node, tmp_path / "ipa",
                         agent_env=_agent_env(), per_service=True):
        output, returncode = tempest.run(workspace, "ServerImageTest")
    assert returncode == 0, (f"{tempest.summary(output)}\n--- compute ---\n"
                             f"{cloud.nova.nova_log('compute')[-4000:]}")
    assert tempest.outcomes(output, "ServerImageTest") == {"test_server_image_create": "ok"}, \
        tempest.summary(output)
    # The scenario deleted its image; the server and its disk are as before.
    assert {image["id"] for image in cloud.images()} == images_before
    assert _server(cloud, server)["status"] == "ACTIVE"
    assert server.disk.sha256() == before
    assert cloud.ironic.node(server.node)["provision_state"] == "active"
    # The driver's upload credential (minted for tempest's admin) is gone.
    admin = cloud.keystone.api("GET", "/v3/users?name=admin")["users"][0]["id"]
    assert _app_credentials(cloud, admin) == []
