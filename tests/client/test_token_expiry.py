"""A snapshot that outlasts its Keystone token still ends with a verified image.

Keystone caps a token's life (``[token] expiration``, 1 h by default), and a
long capture can outlast it: Glance then holds the data but refuses the
token for what comes after the upload (the digest check, the report). Here
the cloud of ``conftest`` runs with a Keystone whose tokens live
:data:`TOKEN_LIFE` seconds, and the agent reaches Glance through a proxy that
passes :data:`RATE` bytes a second, so that the upload of the test disk
honestly takes longer than a token lives (nothing fakes the expiry: Glance's
keystonemiddleware asks Keystone, which refuses the expired token).

- Runbook (the step's own credential): the step gets a new token for every
  call after the upload; it succeeds and the image is judged by Glance's
  digests and ``qemu-img compare``.
- Client (a token handed to the step): the step fails with "stored, not
  verified by the step" and the report in its message; the client verifies
  the image with its own session, records the report and brings the node
  back to ``active``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.helpers import Disk, assert_image_restores, run
from tests.stack.throttle import ThrottleProxy, throttle_proxy

from .conftest import Cloud, agent_on_demand, build_cloud
from .test_runbook_agent_config import (  # noqa: F401 - fixtures bound to this module's cloud
    RUNBOOK,
    _owned_by,
    _run_runbook,
    operator,
    settled,
)
from .operator import Operator, write_runbook
from .test_snapshot_command import _alice_credentials, _node_settled, assert_same_files

#: Seconds a Keystone token lives in this module's cloud. The client's token
#: must still be valid when the upload starts (minted after the power-off:
#: the agent's start, the step's checks and a read of the disk come first),
#: which on a busy 2-core machine took more than 60 s.
TOKEN_LIFE = 90
#: Bytes a second the agent may send to Glance: the test disk's image
#: (about 160 MiB of random data) takes some 110 s to upload.
RATE = 1536 * 1024


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """The cloud of ``conftest`` with tokens that live :data:`TOKEN_LIFE` seconds."""
    # keystoneauth renews a token that expires within 120 s before every
    # request, so with short tokens every service call logs its service
    # user in again: bcrypt's fewest rounds keep that from making every
    # request seconds slower on a busy machine.
    conf = {"token": {"expiration": str(TOKEN_LIFE)},
            "identity": {"password_hash_rounds": "4"}}
    with build_cloud(tmp_path_factory.mktemp("short-tokens"), keystone_conf=conf) as built:
        assert built.keystone.token_life == TOKEN_LIFE
        yield built


@pytest.fixture(scope="module")
def slow_glance(cloud: Cloud) -> Iterator[ThrottleProxy]:
    """Glance behind a link of :data:`RATE` bytes a second."""
    port = int(cloud.glance.endpoint.rsplit(":", 1)[1])
    with throttle_proxy(port, rate=RATE) as proxy:
        yield proxy


def _judge(cloud: Cloud, image_id: str) -> tuple[dict, bytes]:
    """The image is active and Glance's digests equal the recorded report and the bytes."""
    image = cloud.glance.get_image(image_id)
    assert image["status"] == "active", image
    data = cloud.glance.download(image_id)
    assert image["checksum"] == image["snapshot_md5"] == hashlib.md5(data).hexdigest()
    assert (image["os_hash_algo"], image["os_hash_value"]) == ("sha512", image["snapshot_sha512"])
    assert image["snapshot_sha512"] == hashlib.sha512(data).hexdigest()
    assert image["snapshot_sha256"] == hashlib.sha256(data).hexdigest()
    assert image["size"] == len(data) == int(image["snapshot_image_size"])
    # The capture (upload included) really outlasted a token.
    assert float(image["snapshot_seconds"]) > TOKEN_LIFE, image["snapshot_seconds"]
    return image, data


def test_runbook_step_renews_its_token_after_a_long_upload(
        cloud: Cloud, node: str, disk: Disk, operator: Operator, settled: None,  # noqa: F811
        slow_glance: ThrottleProxy, tmp_path: Path) -> None:
    sha_before = disk.sha256()
    before = {image["id"] for image in cloud.images()}
    write_runbook(cloud, node, RUNBOOK, {"device": disk.device, "skip_free_space": False},
                   tmp_path)
    conf = operator.agent_conf(cloud)
    conf["snapshot"]["glance_endpoint"] = slow_glance.endpoint
    record, agent_log = _run_runbook(cloud, node, RUNBOOK, conf, tmp_path / "ipa",
                                     expect="active")
    assert not record["last_error"], record["last_error"]
    new = [image for image in _owned_by(cloud, operator.project).values()
           if image["id"] not in before]
    assert len(new) == 1, new
    image, data = _judge(cloud, new[0]["id"])
    assert slow_glance.sent >= len(data)
    assert_image_restores(data, disk, tmp_path)
    assert disk.sha256() == sha_before, "the disk changed"
    assert operator.secret not in agent_log


def test_client_verifies_an_image_stored_after_the_step_token_expired(
        cloud: Cloud, node: str, disk: Disk, slow_glance: ThrottleProxy,
        tmp_path: Path) -> None:
    sha_before = disk.sha256()
    record = cloud.ironic.node(node)
    if record["power_state"] != "power on":
        cloud.ironic.cli("node", "power", "on", node)
    with agent_on_demand(cloud.ironic, node, tmp_path / "ipa") as watch:
        result = cloud.cli("alice", "baremetal", "node", "snapshot", node, "--name", "long",
                           "--device", disk.device, "--glance-endpoint", slow_glance.endpoint,
                           "--shutdown-timeout", "60", "--timeout", "600", "-f", "json")
    agent_log = watch.agent_log()
    assert result.returncode == 0, (f"exit {result.returncode}\n{result.stderr[-4000:]}\n"
                                    f"states {watch.states}\n{agent_log[-4000:]}")
    out = json.loads(result.stdout)
    # The step itself could not verify: Glance refused the expired token.
    assert f"Image {out['image_id']} is stored, not verified by the step" in agent_log, \
        agent_log[-4000:]
    assert "service failed" in watch.states, watch.states
    image, data = _judge(cloud, out["image_id"])
    assert (out["status"], out["sha256"], out["md5"], out["size"]) == (
        "active", image["snapshot_sha256"], image["checksum"], len(data))
    # The client recorded the report the step would have written.
    assert image["snapshot_node"] == node
    assert image["snapshot_device"] == disk.device
    assert image["snapshot_format"] == "qcow2"
    assert image["owner"] == cloud.demo_project
    qcow2 = tmp_path / "snap.qcow2"
    qcow2.write_bytes(data)
    run("qemu-img", "check", "-q", str(qcow2))
    assert_same_files(disk, qcow2, tmp_path)
    assert disk.sha256() == sha_before, "the disk changed"
    # The node is back where it was, active and powered on; the upload
    # credential is gone.
    after = _node_settled(cloud, node)
    assert after["power_state"] == "power on", after
    assert _alice_credentials(cloud) == []
