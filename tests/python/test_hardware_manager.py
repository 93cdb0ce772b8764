"""The hardware manager's contract with ironic-python-agent and Ironic."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from ironic_python_agent import config as ipa_config

ipa_config.populate_config()

from ironic_python_agent import errors, hardware  # noqa: E402
from oslo_config import cfg  # noqa: E402

from ironic_snapshot import conf, devices, hardware_manager  # noqa: E402

DOCUMENTED_ARGS = {
    "image_id", "glance_endpoint", "auth_token", "device", "disk_format", "compression",
    "compression_level", "cluster_size", "threads", "memory_limit", "skip_free_space", "insecure",
}


def test_entry_point_registered() -> None:
    from importlib.metadata import entry_points

    found = entry_points(group="ironic_python_agent.hardware_managers", name="snapshot")
    assert [ep.value for ep in found] == ["ironic_snapshot.hardware_manager:SnapshotHardwareManager"]
    opts = entry_points(group="oslo.config.opts", name="ironic_snapshot")
    assert [ep.value for ep in opts] == ["ironic_snapshot.conf:list_opts"]


def test_service_provider_when_engine_loads() -> None:
    manager = hardware_manager.SnapshotHardwareManager()
    assert manager.evaluate_hardware_support() == hardware.HardwareSupport.SERVICE_PROVIDER


def test_service_step_description() -> None:
    steps = hardware_manager.SnapshotHardwareManager().get_service_steps({}, [])
    assert steps == [{
        "step": "snapshot_disk", "priority": 0, "interface": "deploy",
        "reboot_requested": False, "abortable": False,
        "argsinfo": hardware_manager.SNAPSHOT_DISK_ARGSINFO,
    }]
    argsinfo = hardware_manager.SNAPSHOT_DISK_ARGSINFO
    assert set(argsinfo) == DOCUMENTED_ARGS
    # Nothing is required: a runbook names no image (the step creates one
    # with the agent's configured credential).
    assert [name for name, info in argsinfo.items() if info["required"]] == []
    assert all(info["description"] for info in argsinfo.values())
    # The only secret travels in an argument Ironic masks.
    assert [name for name in argsinfo if "token" in name] == ["auth_token"]


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({}, "has no image to fill: pass image_id .* or let the step create its image by "
         r"setting \[snapshot\]auth_url with application_credential_id"),
    ({"device": "/dev/sda"}, "has no image to fill"),
    ({"image_id": ""}, "argument image_id"),
    ({"image_id": "a/b", "glance_endpoint": "http://x"}, "argument image_id"),
    ({"auth_token": "t"}, "No valid Glance endpoint"),
    ({"image_id": "i", "bogus": 1}, "Unknown arguments of step snapshot_disk: bogus"),
    ({"image_id": "i"}, "No valid Glance endpoint"),
    ({"image_id": "i", "glance_endpoint": "ftp://x"}, "No valid Glance endpoint"),
    ({"image_id": "i", "glance_endpoint": "http://x", "compression": "lz4"},
     "argument compression"),
    ({"image_id": "i", "glance_endpoint": "http://x", "threads": -2}, "argument threads"),
    ({"image_id": "i", "glance_endpoint": "http://x", "insecure": "perhaps"},
     "argument insecure"),
    ({"image_id": "i", "glance_endpoint": "http://x", "device": "sda"}, "argument device"),
])
def test_bad_arguments_rejected_before_any_io(kwargs: dict, needle: str) -> None:
    manager = hardware_manager.SnapshotHardwareManager()
    with pytest.raises(errors.InvalidCommandParamsError, match=needle):
        manager.snapshot_disk({"uuid": "n"}, [], **kwargs)


def test_device_checks_refuse_non_block_devices(tmp_path: Path) -> None:
    regular = tmp_path / "disk.img"
    regular.write_bytes(b"\0" * 4096)
    with pytest.raises(errors.BlockDeviceError, match="is not a block device"):
        devices.check_capturable(str(regular))
    with pytest.raises(errors.BlockDeviceError, match="is not a block device"):
        devices.check_capturable("/dev/null")
    with pytest.raises(errors.BlockDeviceError, match="does not exist"):
        devices.check_capturable(str(tmp_path / "missing"))


def test_config_options() -> None:
    local = cfg.ConfigOpts()
    conf.register_opts(local)
    conf.register_opts(local)  # idempotent
    local([])
    assert local.snapshot.compression == "zstd"
    assert local.snapshot.cluster_size == "64K"
    assert local.snapshot.memory_limit == "auto"
    assert local.snapshot.glance_endpoint is None
    [(group, opts)] = conf.list_opts()
    assert group == "snapshot"
    assert {opt.name for opt in opts} >= {"glance_endpoint", "compression", "compression_level",
                                          "cluster_size", "threads", "memory_limit"}


def test_report_properties_are_strings() -> None:
    report = {"sha256": "a", "sha512": "b", "md5": "c", "virtual_size": 10, "image_size": 5,
              "bytes_read": 7, "seconds": 1.23456, "format": "qcow2", "compression": "zstd",
              "cluster_size": 65536, "tool_version": "0.1.0"}
    node = {"uuid": "node-1", "instance_info": {"image_source": "img-0"}}
    props = hardware_manager.SnapshotHardwareManager._report_properties(report, node, "/dev/sda")
    assert all(isinstance(v, str) for v in props.values())
    assert props["snapshot_seconds"] == "1.235"
    assert props["snapshot_node"] == "node-1"
    assert props["snapshot_source_image"] == "img-0"
    assert props["snapshot_device"] == "/dev/sda"
    assert all(k.startswith("snapshot_") for k in props)
    # The provenance record: every other property, as canonical JSON in parts
    # short enough for Nova's 255-character metadata, sealed by its SHA-256.
    parts = [props[f"snapshot_provenance_{n}"] for n in range(1, 10)
             if f"snapshot_provenance_{n}" in props]
    assert len(parts) >= 2 and all(len(part) <= 255 for part in parts)
    record = "".join(parts)
    assert hashlib.sha256(record.encode()).hexdigest() == props["snapshot_provenance_sha256"]
    others = {k: v for k, v in props.items() if not k.startswith("snapshot_provenance_")}
    assert json.loads(record) == others
    assert record == json.dumps(others, sort_keys=True, separators=(",", ":"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", props["snapshot_captured_at"])


@pytest.fixture
def snapshot_conf() -> Any:
    """Sets ``[snapshot]`` options of the agent configuration for one test."""
    names: list[str] = []

    def set_opts(**values: Any) -> None:
        for name, value in values.items():
            cfg.CONF.set_override(name, value, group="snapshot")
            names.append(name)

    yield set_opts
    for name in names:
        cfg.CONF.clear_override(name, group="snapshot")


SECRET = "s3cret-never-shown"


@pytest.mark.parametrize(("opts", "needle"), [
    ({"application_credential_id": "c", "application_credential_secret": SECRET},
     r"\[snapshot\]application_credential_id is set but \[snapshot\]auth_url is not"),
    ({"auth_url": "http://ks", "application_credential_id": "c"},
     r"\[snapshot\]application_credential_secret is not set"),
    ({"auth_url": "http://ks", "application_credential_secret": SECRET},
     r"\[snapshot\]application_credential_id is not set"),
    ({"auth_url": "http://ks"}, "no complete credential"),
    ({"auth_url": "http://ks", "username": "u", "password": SECRET},
     "no complete credential"),
    ({"auth_url": "http://ks", "application_credential_id": "c",
      "application_credential_secret": SECRET, "username": "u"}, "keep only one"),
    ({"auth_url": "ks:5000", "application_credential_id": "c",
      "application_credential_secret": SECRET}, "not an http:// or https:// URL"),
    ({"auth_url": "http://ks", "application_credential_id": "c",
      "application_credential_secret": SECRET, "image_name_template": "snap-{host}"},
     r"image_name_template 'snap-\{host\}' is not valid .*\{node_uuid\}, \{node_name\}"),
    ({"auth_url": "http://ks", "application_credential_id": "c",
      "application_credential_secret": SECRET,
      "image_properties": {"snapshot_sha256": "forged"}}, "sets snapshot_sha256"),
    ({"auth_url": "http://ks", "application_credential_id": "c",
      "application_credential_secret": SECRET,
      "image_properties": {"visibility": "public"}}, "sets visibility"),
])
def test_configured_credential_rules_before_any_io(
        snapshot_conf: Any, opts: dict, needle: str) -> None:
    snapshot_conf(**opts)
    manager = hardware_manager.SnapshotHardwareManager()
    with pytest.raises(errors.InvalidCommandParamsError, match=needle) as info:
        manager.snapshot_disk({"uuid": "n"}, [], device="/dev/ironic-snapshot-none")
    assert SECRET not in str(info.value)


def test_configured_credential_is_complete_and_hides_its_secret(snapshot_conf: Any) -> None:
    from ironic_snapshot.glance import ConfiguredCredential

    snapshot_conf(auth_url="https://ks.example.org:5000/v3/", application_credential_id="c1",
                  application_credential_secret=SECRET)
    credential = ConfiguredCredential.from_conf(cfg.CONF.snapshot)
    assert credential is not None
    assert credential.auth_url == "https://ks.example.org:5000"
    assert SECRET not in repr(credential) and SECRET not in credential.describe()
    assert credential.describe() == "application credential c1"


def test_no_credential_configured_is_none() -> None:
    from ironic_snapshot.glance import ConfiguredCredential

    assert ConfiguredCredential.from_conf(cfg.CONF.snapshot) is None


def test_image_name_template_placeholders() -> None:
    image = hardware_manager._NewImage("snap-{node_name}-{node_uuid}-{device}-{timestamp}",
                                       {"uuid": "u-1", "name": None}, "qcow2", "private", {})
    name = image.name("/dev/sdb")
    prefix = "snap-u-1-u-1-/dev/sdb-"
    assert name.startswith(prefix), name
    assert len(name) == len(prefix) + len("20261124T201500Z") and name.endswith("Z")
    named = hardware_manager._NewImage("{node_name}", {"uuid": "u-1", "name": "web-3"},
                                       "qcow2", "private", {})
    assert named.name("/dev/sda") == "web-3"


def test_catalog_lookup() -> None:
    from ironic_snapshot.glance import find_endpoint

    catalog = [
        {"type": "identity", "endpoints": [{"interface": "public", "url": "http://ks"}]},
        {"type": "image", "endpoints": [
            {"interface": "internal", "region_id": "R1", "url": "http://g-int"},
            {"interface": "public", "region_id": "R1", "url": "http://g-r1"},
            {"interface": "public", "region_id": "R2", "url": "http://g-r2"}]},
    ]
    assert find_endpoint(catalog, "image", "public", None) == "http://g-r1"
    assert find_endpoint(catalog, "image", "public", "R2") == "http://g-r2"
    assert find_endpoint(catalog, "image", "internal", None) == "http://g-int"
    assert find_endpoint(catalog, "image", "admin", None) is None
    assert find_endpoint([], "image", "public", None) is None
