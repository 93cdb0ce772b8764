"""Scenario: ``server image create`` of a bare-metal server, through Nova.

The server of ``[baremetal_snapshot] server`` runs on a node of a compute
service whose driver is ironic-snapshot's: Nova creates the image, the driver
services the node with ``snapshot_disk`` and checks Glance's hashes against
the step's report. The scenario judges the image the same way, checks that
the server and its node are back, and deletes the image.
"""

from __future__ import annotations

import time
from typing import Any

from tempest import config
from tempest.lib.common.utils import data_utils
from tempest.lib.common.utils import test_utils
from tempest.lib import decorators
from tempest.lib import exceptions as lib_exc

from ironic_snapshot.tempest_plugin.tests.scenario.base import SnapshotScenario

CONF = config.CONF


class ServerImageTest(SnapshotScenario):
    """``server image create`` of a bare-metal server makes a verified image."""

    # admin may snapshot any project's server (Nova's default policy), so the
    # scenario can use a server tempest did not boot; system_admin reads the node.
    credentials = ["admin", "system_admin"]

    @classmethod
    def skip_checks(cls):
        super().skip_checks()
        if not CONF.service_available.nova:
            raise cls.skipException("Nova is not available ([service_available] nova)")
        if not CONF.baremetal_snapshot.server:
            raise cls.skipException(
                "No server to snapshot: set [baremetal_snapshot] server to an ACTIVE "
                "bare-metal server of ironic-snapshot's compute driver")

    @classmethod
    def setup_clients(cls):
        super().setup_clients()
        cls.servers = cls.os_admin.servers_client
        cls.compute_images = cls.os_admin.compute_images_client
        cls.images = cls.os_admin.image_client_v2

    @classmethod
    def resource_setup(cls):
        super().resource_setup()
        server = cls.servers.show_server(CONF.baremetal_snapshot.server)["server"]
        cls.server_id = server["id"]
        if server["status"] != "ACTIVE":
            raise lib_exc.TempestException(
                f"Server {cls.server_id} is {server['status']!r}, not 'ACTIVE': "
                "the server scenario needs an active server")
        # Ironic's compute driver names the hypervisor after the node.
        cls.node_id = server["OS-EXT-SRV-ATTR:hypervisor_hostname"]

    def _create_action_failure(self) -> str:
        """What Nova recorded about the newest createImage of the server."""
        actions = self.servers.list_instance_actions(self.server_id)["instanceActions"]
        creates = [a for a in actions if a["action"] == "createImage"]
        if not creates:
            return "Nova recorded no createImage action"
        action = self.servers.show_instance_action(
            self.server_id, creates[0]["request_id"])["instanceAction"]
        events = [f"{e.get('event')}: {e.get('result')} {e.get('traceback') or ''}".strip()
                  for e in action.get("events", [])]
        return "; ".join(events) or f"action {action.get('message')!r}"

    def _wait_active(self, image_id: str) -> dict[str, Any]:
        """Waits for the snapshot image; a deleted one means the snapshot failed."""
        deadline = time.monotonic() + CONF.baremetal_snapshot.service_timeout
        while True:
            try:
                image = self.images.show_image(image_id)
            except lib_exc.NotFound:
                # Nova deletes the image of a failed snapshot.
                raise lib_exc.TempestException(
                    f"Nova deleted image {image_id}: the snapshot failed: "
                    f"{self._create_action_failure()}")
            if image["status"] == "active":
                return image
            if image["status"] in ("killed", "deleted", "deactivated"):
                raise lib_exc.TempestException(
                    f"image {image_id} is {image['status']!r}: {self._create_action_failure()}")
            if time.monotonic() > deadline:
                raise lib_exc.TimeoutException(
                    f"image {image_id} still {image['status']!r} after "
                    f"{CONF.baremetal_snapshot.service_timeout} s")
            time.sleep(2)

    def _wait_server_settled(self) -> dict[str, Any]:
        """The server once Nova has ended the snapshot's task."""
        deadline = time.monotonic() + CONF.baremetal_snapshot.service_timeout
        while True:
            server = self.servers.show_server(self.server_id)["server"]
            if not server.get("OS-EXT-STS:task_state") or time.monotonic() > deadline:
                return server
            time.sleep(2)

    @decorators.idempotent_id("3f6d2a8b-9c1e-4e7f-8b2a-5d4c3b2a1f55")
    def test_server_image_create(self):
        """The image is active, Nova's and ours properties agree with Glance; the server is back."""
        name = data_utils.rand_name(prefix="tempest", name="server-image")
        response = self.compute_images.create_image(self.server_id, name=name)
        # Before compute API 2.45 the id is only in the Location header.
        image_id = (response.get("image_id")
                    or data_utils.parse_image_id(response.response["location"]))
        self.addCleanup(test_utils.call_and_ignore_notfound_exc,
                        self.images.delete_image, image_id)
        image = self._wait_active(image_id)
        # Glance marks the image active when the upload ends; the driver then
        # checks it and Nova ends the task: wait for that before judging.
        server = self._wait_server_settled()
        image = self.images.show_image(image_id)

        self.assertEqual("active", image["status"])
        # Nova's properties of a snapshot ...
        self.assertEqual(self.server_id, image.get("instance_uuid"))
        self.assertEqual("snapshot", image.get("image_type"))
        # ... and the step's report, equal to what Glance computed itself.
        self.assertEqual(image["snapshot_sha512"], image["os_hash_value"])
        self.assertEqual("sha512", image["os_hash_algo"])
        self.assertEqual(image["snapshot_md5"], image["checksum"])
        self.assertEqual(int(image["snapshot_image_size"]), image["size"])
        self.assertEqual(self.node_id, image.get("snapshot_node"))

        self.assertEqual("ACTIVE", server["status"],
                         f"server {server['status']!r} after the snapshot: "
                         f"{self._create_action_failure()}")
        self.assertFalse(server.get("OS-EXT-STS:task_state"))
        node = self.baremetal.show_node(self.node_id)
        self.assertEqual("active", node["provision_state"])
        self.assertEqual("power on", node["power_state"])
        self.assertEqual(self.server_id, node["instance_uuid"])
