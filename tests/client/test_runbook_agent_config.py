"""A runbook snapshots a node with nothing per-run in it: the agent's configuration holds the rest.

An Ironic runbook is stored once and used for many nodes and runs, so it can
name neither a fresh image nor a short-lived token. Here, as an operator
would set it up, on the real Keystone/Glance/Ironic of ``conftest``:

- an operator project ``snapshots`` and its user create an application
  credential restricted by access rules to the image calls the step makes
  (create, read, fill, record the report, delete its own failed image);
- that credential goes into the agent's configuration file (``[snapshot]``),
  with the image name template and extra properties;
- a runbook holding only ``snapshot_disk`` with ``device`` (the loop disk) is
  created with the real ``baremetal runbook create`` and approved for the
  node by a trait;
- ``baremetal node service NODE --runbook NAME`` runs it through a real
  ironic-python-agent, which authenticates, finds Glance in the catalog,
  creates the image and fills it.

The image is judged by Glance's digests against the step's report and by
``qemu-img compare`` against the disk; the logs are searched for the secret.
A wrong secret and a capture that fails after the image was created show
what an operator sees then, and that no image is left behind.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.helpers import Disk, assert_image_restores, run

from .conftest import PASSWORD, Cloud, agent_on_demand
from .operator import Operator, make_operator, write_runbook

#: The runbook (and the trait approving the node for it).
RUNBOOK = "CUSTOM_SNAPSHOT_AGENT_CONFIG"
#: A runbook whose capture fails after the step created its image.
FAILING_RUNBOOK = "CUSTOM_SNAPSHOT_AGENT_CONFIG_FAILS"
@pytest.fixture(scope="module")
def operator(cloud: Cloud) -> Operator:
    """The operator project, its user and the agents' credential."""
    return make_operator(cloud)


@pytest.fixture
def settled(cloud: Cloud, node: str) -> Iterator[None]:
    """The node active and powered on before the test, and again after it."""
    _back_to_active(cloud, node)
    yield
    _back_to_active(cloud, node)


def _back_to_active(cloud: Cloud, node: str) -> None:
    record = cloud.ironic.node(node)
    if record["provision_state"] == "service failed":
        cloud.ironic.cli("node", "abort", node)
    cloud.ironic.wait_for_state(node, "active", timeout=180)
    if cloud.ironic.node(node)["power_state"] != "power on":
        cloud.ironic.cli("node", "power", "on", node)


def _run_runbook(cloud: Cloud, node: str, name: str, conf: dict[str, dict[str, str]],
                 workdir: Path, *, expect: str) -> tuple[dict[str, Any], str]:
    """Services ``node`` with runbook ``name``; returns the final node and the agent log."""
    fail = "service failed" if expect == "active" else "active"
    with agent_on_demand(cloud.ironic, node, workdir, agent_conf=conf) as watch:
        cloud.ironic.cli("node", "service", node, "--runbook", name)
        try:
            record = cloud.ironic.wait_for_state(node, expect, timeout=600,
                                                 fail_states=(fail,))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstates {watch.states}\n--- agent log ---\n"
                                 f"{watch.agent_log()[-6000:]}") from None
    assert "service wait" in watch.states, watch.states
    return record, watch.agent_log()


def _owned_by(cloud: Cloud, project: str) -> dict[str, dict[str, Any]]:
    return {image["id"]: image for image in cloud.images() if image["owner"] == project}


def test_runbook_snapshots_with_the_agent_configured_credential(
        cloud: Cloud, node: str, disk: Disk, operator: Operator, settled: None,
        tmp_path: Path) -> None:
    sha_before = disk.sha256()
    before = {image["id"] for image in cloud.images()}
    # Only the disk, and byte-for-byte capture so qemu-img compare can judge
    # it: no image id, no endpoint, no credential.
    book = write_runbook(cloud, node, RUNBOOK,
                          {"device": disk.device, "skip_free_space": False}, tmp_path)
    assert set(book["steps"][0]["args"]) == {"device", "skip_free_space"}

    record, agent_log = _run_runbook(cloud, node, RUNBOOK, operator.agent_conf(cloud),
                                     tmp_path / "ipa", expect="active")
    assert not record["last_error"], record["last_error"]

    new = {image_id: image for image_id, image in _owned_by(cloud, operator.project).items()
           if image_id not in before}
    assert len(new) == 1, new
    (image_id, image), = new.items()
    # Created by the step in the credential's project, named by the template.
    assert image["status"] == "active", image
    assert image["visibility"] == "private"
    assert re.fullmatch(r"runbook-client-node-\d{8}T\d{6}Z", image["name"]), image["name"]
    assert (image["purpose"], image["site"]) == ("fleet-backup", "lab1")
    assert image["snapshot_node"] == node
    assert image["snapshot_device"] == disk.device
    assert (image["disk_format"], image["container_format"]) == ("qcow2", "bare")
    # The operator finds the image id in the agent's log (INFO).
    assert f"created image {image_id} named {image['name']}" in agent_log
    # Glance's own digests equal the step's report and the bytes.
    data = cloud.glance.download(image_id)
    assert image["checksum"] == image["snapshot_md5"] == hashlib.md5(data).hexdigest()
    assert (image["os_hash_algo"], image["os_hash_value"]) == (
        "sha512", image["snapshot_sha512"])
    assert image["snapshot_sha512"] == hashlib.sha512(data).hexdigest()
    assert image["snapshot_sha256"] == hashlib.sha256(data).hexdigest()
    assert image["size"] == len(data) == int(image["snapshot_image_size"])
    assert_image_restores(data, disk, tmp_path)
    assert disk.sha256() == sha_before, "the disk changed"

    # The secret is nowhere: not in the agent's or Ironic's log, the node or
    # the runbook.
    assert operator.secret not in agent_log
    assert operator.secret not in cloud.ironic.log_path.read_text(errors="replace")
    assert operator.secret not in json.dumps(cloud.ironic.node(node))
    assert operator.secret not in json.dumps(cloud.ironic.api("GET", f"/v1/runbooks/{RUNBOOK}"))

    # The credential can do only what its access rules say: no listing, no
    # image of another project, no Ironic.
    token = cloud.keystone.app_credential_token(operator.credential_id, operator.secret)
    assert cloud.glance.request("GET", "/v2/images", token=token)[0] == 401
    assert cloud.glance.request("GET", f"/v2/images/{image_id}", token=token)[0] == 200
    status, raw = cloud.glance.request("POST", "/v2/images", {
        "name": "alices", "disk_format": "raw", "container_format": "bare"},
        token=cloud.token("alice"))
    assert status == 201, raw
    alices = json.loads(raw)["id"]
    assert cloud.glance.request("GET", f"/v2/images/{alices}", token=token)[0] == 404
    assert cloud.glance.request("DELETE", f"/v2/images/{alices}", token=token)[0] == 404
    cloud.glance.delete_image(alices)


def test_wrong_secret_fails_clearly_and_leaves_no_image(
        cloud: Cloud, node: str, disk: Disk, operator: Operator, settled: None,
        tmp_path: Path) -> None:
    write_runbook(cloud, node, RUNBOOK, {"device": disk.device}, tmp_path)
    before = {image["id"] for image in cloud.images()}
    wrong = "wrong-" + operator.secret[::-1]
    record, agent_log = _run_runbook(cloud, node, RUNBOOK,
                                     operator.agent_conf(cloud, secret=wrong),
                                     tmp_path / "ipa", expect="service failed")
    error = record["last_error"]
    assert (f"Keystone at {cloud.keystone.endpoint} refused the application credential "
            f"{operator.credential_id} of [snapshot] in the agent configuration (HTTP 401"
            in error), error
    assert "check [snapshot]application_credential_id and application_credential_secret" in error
    for secret in (wrong, operator.secret):
        assert secret not in error
        assert secret not in agent_log
    assert {image["id"] for image in cloud.images()} == before


def test_capture_failing_after_creation_deletes_the_image(
        cloud: Cloud, node: str, disk: Disk, operator: Operator, settled: None,
        tmp_path: Path) -> None:
    # A memory limit the option checks accept (they run before the image is
    # made) but too small for this disk's qcow2 metadata, which the engine
    # only knows once it has scanned the disk, after the image exists.
    write_runbook(cloud, node, FAILING_RUNBOOK,
                   {"device": disk.device, "memory_limit": "16K"}, tmp_path)
    before = {image["id"] for image in cloud.images()}
    record, agent_log = _run_runbook(cloud, node, FAILING_RUNBOOK, operator.agent_conf(cloud),
                                     tmp_path / "ipa", expect="service failed")
    error = record["last_error"]
    assert "cannot hold the metadata of this image" in error, error
    created = re.search(r"created image ([0-9a-f-]{36}) named runbook-client-node-", agent_log)
    assert created, agent_log[-4000:]
    assert f"The image {created[1]} the step created was deleted" in error, error
    # Deleted in Glance (the credential's DELETE rule), nothing left behind.
    assert cloud.glance.request("GET", f"/v2/images/{created[1]}")[0] == 404
    assert {image["id"] for image in cloud.images()} == before
    assert operator.secret not in agent_log + error


def test_password_credential_and_explicit_glance_endpoint(
        cloud: Cloud, node: str, disk: Disk, operator: Operator, settled: None,
        tmp_path: Path) -> None:
    """The other credential form: a user's password scoped to the operator project."""
    write_runbook(cloud, node, RUNBOOK, {"device": disk.device}, tmp_path)
    before = {image["id"] for image in cloud.images()}
    conf = {"snapshot": {
        "auth_url": cloud.keystone.auth_url + "/",
        "username": "snapshot-operator",
        "password": PASSWORD,
        "project_name": "snapshots",
        # Given: the catalog is not consulted for the endpoint.
        "glance_endpoint": cloud.glance.endpoint + "/v2",
    }}
    record, agent_log = _run_runbook(cloud, node, RUNBOOK, conf, tmp_path / "ipa",
                                     expect="active")
    assert not record["last_error"], record["last_error"]
    new = [image for image in _owned_by(cloud, operator.project).values()
           if image["id"] not in before]
    assert len(new) == 1, new
    (image,) = new
    # The default template and visibility.
    assert re.fullmatch(r"snapshot-client-node-\d{8}T\d{6}Z", image["name"]), image["name"]
    assert image["status"] == "active" and image["visibility"] == "private"
    data = cloud.glance.download(image["id"])
    assert image["checksum"] == image["snapshot_md5"] == hashlib.md5(data).hexdigest()
    assert image["os_hash_value"] == image["snapshot_sha512"] == hashlib.sha512(data).hexdigest()
    qcow2 = tmp_path / "snapshot.qcow2"
    qcow2.write_bytes(data)
    run("qemu-img", "check", "-q", str(qcow2))
    assert f"created image {image['id']} named {image['name']}" in agent_log
    assert PASSWORD not in agent_log
