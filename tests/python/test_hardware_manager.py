"""The hardware manager's contract with ironic-python-agent and Ironic."""

from __future__ import annotations

from pathlib import Path

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
    assert [name for name, info in argsinfo.items() if info["required"]] == ["image_id"]
    assert all(info["description"] for info in argsinfo.values())
    # The only secret travels in an argument Ironic masks.
    assert [name for name in argsinfo if "token" in name] == ["auth_token"]


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({}, "image_id of step snapshot_disk is required"),
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
    assert local.snapshot.memory_limit == "256M"
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
