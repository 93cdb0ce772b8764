"""The tempest plugin's scenarios, run by tempest itself against the loopback cloud.

Tempest from PyPI runs ``ironic_snapshot.tempest_plugin`` through its own
runner (``tempest run``, stestr) with a ``tempest.conf`` written here for the
cloud of ``conftest`` (Keystone, Glance, Ironic with Keystone auth; tempest
makes its own throwaway users). The node is the test disk's, the runbook is
made as an operator makes it (``tests/client/operator.py``), and a fresh
ironic-python-agent starts whenever the node waits for one. Three runs: all
scenarios pass; with the feature flag off they are skipped with the reason;
with a Glance endpoint the agent cannot reach the scenario fails with the
step's own error in tempest's output.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.helpers import Disk
from tests.stack import tempest
from tests.stack.glance import free_port

from .conftest import Cloud, agent_on_demand
from .operator import Operator, make_operator, write_runbook

#: The runbook the plugin's runbook scenario runs.
RUNBOOK = "CUSTOM_SNAPSHOT_TEMPEST"
#: The class of the plugin's node scenarios.
SCENARIO_CLASS = "SnapshotDiskTest"
#: Every scenario of that class.
SCENARIOS = {
    "test_snapshot_into_a_given_image",
    "test_snapshot_through_a_runbook",
    "test_unknown_image_fails_and_abort_brings_the_node_back",
    "test_client_workflow_with_a_scoped_credential",
}


@pytest.fixture(scope="module")
def operator(cloud: Cloud) -> Operator:
    """The operator project, its user and the agents' credential."""
    return make_operator(cloud)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tempest workspace (registered in a file of its own, not in ~/.tempest)."""
    return tempest.init_workspace(tmp_path_factory.mktemp("tempest"))


def _write_conf(workspace: Path, cloud: Cloud, node: str, disk: Disk, *,
                available: bool = True, glance_endpoint: str = "") -> None:
    tempest.write_conf(workspace, cloud.keystone, {
        "node": node, "runbook": RUNBOOK, "glance_endpoint": glance_endpoint,
        # The loop disk is no root device candidate of the agent: name it.
        "step_args": f"device:{disk.device},memory_limit:256M",
        "service_timeout": "600"}, ironic_snapshot=available)


@pytest.fixture(scope="module")
def agents(cloud: Cloud, node: str, operator: Operator,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A fresh agent for every service of the module (with the operator's credential)."""
    with agent_on_demand(cloud.ironic, node, tmp_path_factory.mktemp("ipa"),
                         agent_conf=operator.agent_conf(cloud), per_service=True):
        yield


def test_scenarios_pass_against_the_loopback_cloud(
        cloud: Cloud, node: str, disk: Disk, operator: Operator, agents: None,
        workspace: Path, tmp_path: Path) -> None:
    write_runbook(cloud, node, RUNBOOK, {"device": disk.device, "memory_limit": "256M"},
                  tmp_path)
    before = {image["id"] for image in cloud.images()}
    sha_before = disk.sha256()
    _write_conf(workspace, cloud, node, disk)
    output, returncode = tempest.run(workspace, "ironic_snapshot")
    assert returncode == 0, tempest.summary(output)
    assert tempest.outcomes(output, SCENARIO_CLASS) == dict.fromkeys(SCENARIOS, "ok"), tempest.summary(output)
    # Each scenario cleaned up: no image left, the node active, the client's
    # upload credential gone (the scenario checks it), the disk untouched.
    assert {image["id"] for image in cloud.images()} == before
    record = cloud.ironic.node(node)
    assert record["provision_state"] == "active"
    assert record["owner"] == cloud.demo_project
    assert disk.sha256() == sha_before


def test_flag_off_skips_every_scenario_with_the_reason(
        cloud: Cloud, node: str, disk: Disk, workspace: Path) -> None:
    _write_conf(workspace, cloud, node, disk, available=False)
    output, _ = tempest.run(workspace, "ironic_snapshot")
    # (tempest exits 1 when no test passed, skipped ones included)
    assert re.search(r"Failed: +0", output), tempest.summary(output)
    outcomes = tempest.outcomes(output, SCENARIO_CLASS)
    # A class skipped in setUpClass is reported once, for the class: then no
    # scenario ran at all.
    assert not [o for o in outcomes.values() if o in ("ok", "FAILED")], outcomes
    assert "ironic-snapshot is not available: set [service_available] ironic_snapshot = True" \
        in output, tempest.summary(output)
    assert re.search(r"Skipped: +[1-9]", output), tempest.summary(output)
    assert re.search(r"Passed: +0", output), tempest.summary(output)


def test_unreachable_glance_fails_with_the_steps_error(
        cloud: Cloud, node: str, disk: Disk, agents: None, workspace: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    _write_conf(workspace, cloud, node, disk, glance_endpoint=closed)
    output, returncode = tempest.run(workspace, "test_snapshot_into_a_given_image")
    assert returncode != 0, tempest.summary(output)
    assert tempest.outcomes(output, SCENARIO_CLASS) == {"test_snapshot_into_a_given_image": "FAILED"}, tempest.summary(output)
    # The cleanup aborted the failed service; the step's error is what
    # tempest printed (it is the node's last_error while the node failed).
    assert cloud.ironic.node(node)["provision_state"] == "active"
    assert "the service ended in 'service failed'" in output, tempest.summary(output)
    assert closed in output, tempest.summary(output)
