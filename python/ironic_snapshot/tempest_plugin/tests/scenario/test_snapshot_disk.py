"""Scenarios: a node snapshotted through the ``snapshot_disk`` service step.

Each scenario services the node of ``[baremetal_snapshot] node`` (it must be
``active``), judges the image by Glance's own digests against the report the
step wrote on it, and leaves the node ``active`` and no image behind. The
scenarios share one node, so they are one class: tempest runs a class's tests
one after the other in one worker.
"""

from __future__ import annotations

import uuid
from typing import Any

from tempest import config
from tempest.lib.common.utils import data_utils
from tempest.lib.common.utils import test_utils
from tempest.lib import decorators
from tempest.lib import exceptions as lib_exc

from ironic_snapshot.tempest_plugin.tests.scenario.base import SnapshotScenario

CONF = config.CONF

#: Prefix of the application credential the client mints for one image.
CREDENTIAL_PREFIX = "ironic-snapshot-"


class SnapshotDiskTest(SnapshotScenario):
    """``snapshot_disk`` with an explicit image, by runbook, failing, and by the client."""

    # primary owns the images; admin finds a runbook's image in the operator's
    # project; system_admin services the node (Ironic's admin is system scoped).
    credentials = ["primary", "admin", "system_admin"]

    @classmethod
    def skip_checks(cls):
        super().skip_checks()
        if not CONF.service_available.glance:
            raise cls.skipException("Glance is not available ([service_available] glance)")
        if not CONF.baremetal_snapshot.node:
            raise cls.skipException(
                "No node to snapshot: set [baremetal_snapshot] node to an active node "
                "the tests may service")

    @classmethod
    def setup_clients(cls):
        super().setup_clients()
        cls.images = cls.os_primary.image_client_v2
        cls.admin_images = cls.os_admin.image_client_v2

    @classmethod
    def resource_setup(cls):
        super().resource_setup()
        node = cls.baremetal.show_node(CONF.baremetal_snapshot.node)
        cls.node_id = node["uuid"]
        if node["provision_state"] != "active":
            raise lib_exc.TempestException(
                f"Node {cls.node_id} is {node['provision_state']!r}, not 'active': "
                "the snapshot scenarios need an active node")

    # -- helpers -------------------------------------------------------------

    def _glance_endpoint(self) -> str:
        return CONF.baremetal_snapshot.glance_endpoint or self.os_primary.auth_provider.base_url(
            {"service": CONF.image.catalog_type, "endpoint_type": CONF.image.endpoint_type,
             "region": CONF.image.region or CONF.identity.region})

    def _step(self, **args: Any) -> list[dict[str, Any]]:
        return [{"interface": "deploy", "step": "snapshot_disk",
                 "args": {**CONF.baremetal_snapshot.step_args, **args}}]

    def _back_to_active(self) -> None:
        """Cleanup: a failed service is aborted; the node ends ``active``."""
        node = self.baremetal.show_node(self.node_id)
        if node["provision_state"] == "service failed":
            before = node["provision_updated_at"]
            self.baremetal.set_provision_state(self.node_id, "abort")
            node = self.baremetal.wait_settled(self.node_id, 600, after=before)
        elif node["provision_state"] != "active":
            node = self.baremetal.wait_settled(self.node_id, CONF.baremetal_snapshot.service_timeout,
                                               after=None)
        if node["provision_state"] != "active":
            raise lib_exc.TempestException(
                f"Node {self.node_id} left in {node['provision_state']!r}: "
                f"{node.get('last_error')}")

    def _service(self, **how: Any) -> dict[str, Any]:
        """Services the node (``steps=`` or ``runbook=``); returns it once settled."""
        before = self.baremetal.show_node(self.node_id)["provision_updated_at"]
        self.addCleanup(self._back_to_active)
        self.baremetal.service_node(self.node_id, **how)
        return self.baremetal.wait_settled(self.node_id, CONF.baremetal_snapshot.service_timeout,
                                           after=before)

    def _assert_active(self, node: dict[str, Any]) -> None:
        self.assertEqual("active", node["provision_state"],
                         f"the service ended in {node['provision_state']!r}: "
                         f"last_error {node.get('last_error')!r}")

    def _assert_verified(self, image: dict[str, Any]) -> None:
        """Glance's digests and size equal the step's report; provenance is there."""
        self.assertEqual("active", image["status"])
        self.assertEqual(image["snapshot_sha512"], image["os_hash_value"])
        self.assertEqual("sha512", image["os_hash_algo"])
        self.assertEqual(image["snapshot_md5"], image["checksum"])
        self.assertEqual(int(image["snapshot_image_size"]), image["size"])
        self.assertEqual(self.node_id, image["snapshot_node"])
        for key in ("snapshot_device", "snapshot_virtual_size", "snapshot_tool_version",
                    "snapshot_format"):
            self.assertTrue(image.get(key), f"property {key} missing from the image")

    def _queued_image(self) -> dict[str, Any]:
        image = self.images.create_image(
            name=data_utils.rand_name(prefix="tempest", name="snapshot-disk"),
            disk_format="qcow2", container_format="bare")
        self.addCleanup(test_utils.call_and_ignore_notfound_exc,
                        self.images.delete_image, image["id"])
        return image

    # -- scenarios ---------------------------------------------------------

    @decorators.idempotent_id("5a0c1f3e-1d5b-4a8e-9a61-3c7e0f6b2d11")
    def test_snapshot_into_a_given_image(self):
        """``service`` with ``snapshot_disk`` fills a queued image; Glance's hashes match."""
        image = self._queued_image()
        # The token of tempest's throwaway user: it lives only as long as the
        # test's credentials (the step's arguments are visible while it runs).
        node = self._service(steps=self._step(
            image_id=image["id"], glance_endpoint=self._glance_endpoint(),
            auth_token=self.os_primary.auth_provider.get_token()))
        self._assert_active(node)
        self._assert_verified(self.images.show_image(image["id"]))

    @decorators.idempotent_id("9d2e7b44-6f0a-4c5d-8e3b-1a9f2c6d7e20")
    def test_snapshot_through_a_runbook(self):
        """A runbook without per-run values: the agent's credential creates the image."""
        runbook = CONF.baremetal_snapshot.runbook
        if not runbook:
            raise self.skipException("No runbook: set [baremetal_snapshot] runbook")
        self.baremetal.show_runbook(runbook)
        seen = {i["id"] for i in self._node_images()}
        node = self._service(runbook=runbook)
        new = [i for i in self._node_images() if i["id"] not in seen]
        for image in new:
            self.addCleanup(test_utils.call_and_ignore_notfound_exc,
                            self.admin_images.delete_image, image["id"])
        self._assert_active(node)
        self.assertEqual(1, len(new), f"expected one new image of the node, found {new}")
        self._assert_verified(self.admin_images.show_image(new[0]["id"]))

    def _node_images(self) -> list[dict[str, Any]]:
        """Every image recording this node as its source (as the admin)."""
        return self.admin_images.list_images(
            params={"snapshot_node": self.node_id, "limit": 1000})["images"]

    @decorators.idempotent_id("0c8f6a2d-3e4b-4b7a-b5d9-2f1e8c7a6b33")
    def test_unknown_image_fails_and_abort_brings_the_node_back(self):
        """A wrong image id ends in ``service failed`` naming it; ``abort`` returns to ``active``."""
        missing = str(uuid.uuid4())
        node = self._service(steps=self._step(
            image_id=missing, glance_endpoint=self._glance_endpoint(),
            auth_token=self.os_primary.auth_provider.get_token()))
        self.assertEqual("service failed", node["provision_state"])
        self.assertIn(missing, node.get("last_error") or "")
        self._back_to_active()
        self.assertEqual("active", self.baremetal.show_node(self.node_id)["provision_state"])

    @decorators.idempotent_id("7e1b3c5d-8a9f-4d2e-a6b1-4c3d2e1f0a44")
    def test_client_workflow_with_a_scoped_credential(self):
        """``baremetal node snapshot``'s workflow: verified image, its credential gone."""
        if not CONF.baremetal_snapshot.client_workflow:
            raise self.skipException("The client scenario is off ([baremetal_snapshot] client_workflow)")
        import openstack

        from ironic_snapshot.client import snapshot_node

        creds = self.os_primary.credentials
        owner = self.baremetal.show_node(self.node_id).get("owner")
        # The client runs as the node's owner, as a user of the cloud would.
        self.baremetal.update_node(self.node_id, [
            {"op": "replace" if owner else "add", "path": "/owner", "value": creds.project_id}])
        self.addCleanup(self.baremetal.update_node, self.node_id, [
            {"op": "replace", "path": "/owner", "value": owner} if owner
            else {"op": "remove", "path": "/owner"}])
        self.addCleanup(self._back_to_active)
        conn = openstack.connect(
            auth_url=CONF.identity.uri_v3, username=creds.username, password=creds.password,
            project_id=creds.project_id,
            **({"user_domain_id": creds.user_domain_id} if creds.user_domain_id
               else {"user_domain_name": creds.user_domain_name}),
            region_name=CONF.identity.region,
            verify=not CONF.identity.disable_ssl_certificate_validation)
        args = dict(CONF.baremetal_snapshot.step_args)
        result = snapshot_node(
            conn, self.node_id, name=data_utils.rand_name(prefix="tempest", name="client"),
            device=args.pop("device", None), step_args=args,
            glance_endpoint=CONF.baremetal_snapshot.glance_endpoint or None,
            timeout=CONF.baremetal_snapshot.service_timeout)
        self.addCleanup(test_utils.call_and_ignore_notfound_exc,
                        self.images.delete_image, result.image_id)
        self._assert_active(self.baremetal.show_node(self.node_id))
        self._assert_verified(self.images.show_image(result.image_id))
        left = [c for c in self.os_primary.application_credentials_client.list_application_credentials(
            creds.user_id)["application_credentials"]
            if c["name"].startswith(CREDENTIAL_PREFIX)]
        self.assertEqual([], left, "the upload credential outlived the snapshot")
