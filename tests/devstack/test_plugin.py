"""The DevStack plugin's phases, run in bash against DevStack stand-ins.

See :mod:`harness` for what is real and what records calls: the plugin
scripts, the settings, the runbook file, ironic-python-agent-builder, DIB's
element resolver and the element's extra-data.d hook are real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stack.glance import GlanceServer

from .harness import ELEMENTS, NODES, REPO, WHEEL_NAME, Harness, Result

ALL_STACK = ("stack:install", "stack:post-config", "stack:extra", "stack:test-config")


@pytest.fixture
def harness(tmp_path: Path, glance: tuple[GlanceServer, Path]) -> Harness:
    return Harness(tmp_path, env={"OS_CLIENT_CONFIG_FILE": str(glance[1])})


def queued_image(glance: tuple[GlanceServer, Path], image_id: str, name: str = "ironic-snapshot-runbook-target") -> None:
    """The plugin's image exists in Glance, queued, private, qcow2."""
    image = glance[0].get_image(image_id)
    assert (image["status"], image["name"], image["visibility"]) == ("queued", name, "private")
    assert (image["disk_format"], image["container_format"]) == ("qcow2", "bare")


def runbook_created(r: Result) -> bool:
    """Whether the run called ``openstack baremetal runbook create``."""
    return any(c[:3] == ["baremetal", "runbook", "create"] for c in r.openstack())


def runbook_step_args(r: Result) -> dict:
    """The arguments of the step of the one runbook the run created."""
    (create,) = [c for c in r.of("openstack") if "steps" in c]
    return create["steps"][0]["args"]


def wheel_dir(h: Harness) -> Path:
    return h.dest / "data" / "ironic-snapshot" / "wheels"


def test_full_stack_builds_wheel_ramdisk_and_runbook(
    harness: Harness, glance: tuple[GlanceServer, Path]
) -> None:
    r = harness.run(*ALL_STACK)
    assert r.returncode == 0, r.stderr[-3000:]

    # install: maturin builds the abi3 manylinux wheel from the checkout, pip installs it.
    assert r.of("pip_install")[0]["args"] == ["maturin[zig]>=1.7,<2"]
    (maturin,) = r.of("maturin")
    args = maturin["args"]
    assert args[0] == "build"
    assert {"--release", "--locked", "--zig"} <= set(args)
    assert args[args.index("--compatibility") + 1] == "manylinux_2_28"
    assert args[args.index("--out") + 1] == str(wheel_dir(harness))
    assert Path(maturin["cwd"]) == REPO
    wheel = wheel_dir(harness) / WHEEL_NAME
    assert r.of("pip_install")[1]["args"] == [str(wheel)]

    # post-config: the real ironic-python-agent-builder ran disk-image-create
    # with our element on top of the agent's, for CentOS Stream 9.
    (dib,) = r.of("disk-image-create")
    assert dib["args"][0] == "-o"
    assert dib["args"][2:] == ["ironic-python-agent-ramdisk", "centos", "ironic-snapshot"]
    env = dib["env"]
    assert env["DIB_RELEASE"] == "9-stream"
    assert env["DIB_IRONIC_SNAPSHOT_WHEEL"] == str(wheel)
    assert env["DIB_IRONIC_SNAPSHOT_GLANCE_ENDPOINT"] == "http://192.0.2.10/image"
    assert env["ELEMENTS_PATH"].split(":")[0] == str(ELEMENTS)
    # DIB's resolver found our element and its dependency chain.
    elements = json.loads((harness.root / "elements.json").read_text())
    assert elements["ironic-snapshot"] == str(ELEMENTS / "ironic-snapshot")
    assert "ironic-python-agent-ramdisk-base" in elements
    # The element's extra-data.d hook copied the wheel for install.d.
    assert (harness.root / "hooks" / "ironic-snapshot" / WHEEL_NAME).read_bytes() == b"wheel from maturin"
    # The kernel and ramdisk sit where Ironic's plugin looks, so it uploads
    # these instead of building or downloading its own.
    assert harness.kernel.read_bytes() == b"kernel ironic-python-agent-ramdisk centos ironic-snapshot"
    assert harness.ramdisk.read_bytes() == b"initramfs ironic-python-agent-ramdisk centos ironic-snapshot"
    # The build folder is gone.
    assert not list(harness.dest.glob("ironic-snapshot-ramdisk.*"))

    # extra: queued image (in the real Glance), runbook with the step, traits.
    calls = r.openstack()
    assert all(c["args"][:2] == ["--os-cloud", "devstack-admin"] for c in r.of("openstack"))
    assert calls[0] == ["baremetal", "runbook", "show", "CUSTOM_SNAPSHOT_DISK"]
    create = r.of("openstack")[1]
    assert create["args"][2:7] == ["baremetal", "runbook", "create", "--name", "CUSTOM_SNAPSHOT_DISK"]
    assert create["steps"] == [
        {
            "interface": "deploy",
            "step": "snapshot_disk",
            "order": 1,
            "args": {
                "image_id": create["steps"][0]["args"]["image_id"],
                "glance_endpoint": "http://192.0.2.10/image",
                "disk_format": "qcow2",
                "compression": "zstd",
                "memory_limit": "256M",
            },
        }
    ]
    # The rendered steps file is not left behind.
    assert not Path(create["args"][-1]).exists()
    queued_image(glance, create["steps"][0]["args"]["image_id"])
    assert calls[2] == ["baremetal", "runbook", "trait", "add", "CUSTOM_SNAPSHOT_DISK", "CUSTOM_SNAPSHOT_DISK"]
    assert calls[3][:3] == ["baremetal", "node", "list"]
    assert calls[4:] == [["baremetal", "node", "add", "trait", n, "CUSTOM_SNAPSHOT_DISK"] for n in NODES]

    # test-config: the tempest plugin's flags (no runbook: this runbook fills
    # one image, so it cannot run on every tempest run).
    assert [c["args"][1:] for c in r.of("iniset")] == [
        ["service_available", "ironic_snapshot", "True"],
        ["baremetal_snapshot", "glance_endpoint", "http://192.0.2.10/image"],
        ["baremetal_snapshot", "step_args", "memory_limit:256M"],
    ]
    assert not r.of("die")


def test_prebuilt_wheel_is_installed_and_put_in_the_ramdisk(harness: Harness, tmp_path: Path) -> None:
    wheel = tmp_path / "ironic_snapshot-0.1.0-cp311-abi3-manylinux_2_17_x86_64.whl"
    wheel.write_bytes(b"prebuilt")
    r = harness.run("stack:install", "stack:post-config", IRONIC_SNAPSHOT_WHEEL=str(wheel))
    assert r.returncode == 0, r.stderr[-3000:]
    assert not r.of("maturin")
    assert [c["args"] for c in r.of("pip_install")] == [[str(wheel)]]
    assert r.of("disk-image-create")[0]["env"]["DIB_IRONIC_SNAPSHOT_WHEEL"] == str(wheel)
    assert (harness.root / "hooks" / "ironic-snapshot" / wheel.name).read_bytes() == b"prebuilt"


def test_post_config_alone_finds_the_wheel_built_earlier(harness: Harness) -> None:
    # stack.sh keeps variables across phases; a re-run of one phase does not.
    wheel_dir(harness).mkdir(parents=True)
    (wheel_dir(harness) / WHEEL_NAME).write_bytes(b"earlier")
    r = harness.run("stack:post-config")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.of("disk-image-create")[0]["env"]["DIB_IRONIC_SNAPSHOT_WHEEL"] == str(wheel_dir(harness) / WHEEL_NAME)


def test_missing_prebuilt_wheel_stops_the_stack(harness: Harness, tmp_path: Path) -> None:
    r = harness.run("stack:install", IRONIC_SNAPSHOT_WHEEL=str(tmp_path / "nope.whl"))
    assert r.returncode != 0
    (die,) = r.of("die")
    assert "is not a file" in die["args"][0]
    assert not r.of("pip_install")


def test_without_rust_the_plugin_says_what_to_do(harness: Harness) -> None:
    (harness.bin / "cargo").unlink()
    r = harness.run("stack:install")
    assert r.returncode != 0
    (die,) = r.of("die")
    assert "Rust" in die["args"][0] and "IRONIC_SNAPSHOT_WHEEL" in die["args"][0]
    assert not r.of("maturin")


def test_rust_from_rustup_in_home_is_found(harness: Harness) -> None:
    (harness.bin / "cargo").unlink()
    cargo = harness.home / ".cargo" / "bin" / "cargo"
    cargo.parent.mkdir(parents=True)
    cargo.write_text("#!/bin/sh\nexit 0\n")
    cargo.chmod(0o755)
    r = harness.run("stack:install")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.of("maturin")) == 1


def test_ramdisk_build_can_be_turned_off(harness: Harness) -> None:
    r = harness.run(*ALL_STACK, IRONIC_SNAPSHOT_BUILD_RAMDISK="False")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not r.of("disk-image-create")
    assert not harness.kernel.exists() and not harness.ramdisk.exists()
    # The rest still happens.
    assert r.of("maturin")
    assert runbook_created(r)


def test_ramdisk_options_reach_the_builder(harness: Harness) -> None:
    r = harness.run(
        "stack:install",
        "stack:post-config",
        IRONIC_SNAPSHOT_RAMDISK_DISTRO="debian",
        IRONIC_SNAPSHOT_RAMDISK_RELEASE="bookworm",
        IRONIC_SNAPSHOT_RAMDISK_ELEMENTS="extra-hardware devuser",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (dib,) = r.of("disk-image-create")
    assert dib["args"][2:] == ["ironic-python-agent-ramdisk", "debian", "ironic-snapshot", "extra-hardware", "devuser"]
    assert dib["env"]["DIB_RELEASE"] == "bookworm"


def test_devstack_checkouts_of_the_agent_are_used(harness: Harness) -> None:
    ipa = harness.dest / "ironic-python-agent"
    ipa.mkdir()
    (harness.dest / "requirements").mkdir()
    r = harness.run("stack:install", "stack:post-config", IRONIC_PYTHON_AGENT_DIR=str(ipa), TARGET_BRANCH="stable/x")
    assert r.returncode == 0, r.stderr[-3000:]
    env = r.of("disk-image-create")[0]["env"]
    assert env["DIB_REPOLOCATION_ironic_python_agent"] == str(ipa)
    assert env["DIB_REPOREF_ironic_python_agent"] == "stable/x"
    assert env["DIB_REPOLOCATION_requirements"] == str(harness.dest / "requirements")


def test_post_config_without_ironic_deploy_paths_explains_plugin_order(harness: Harness) -> None:
    r = harness.run("stack:install", "stack:post-config", IRONIC_DEPLOY_KERNEL="", IRONIC_DEPLOY_RAMDISK="")
    assert r.returncode != 0
    assert "enable the ironic plugin before ironic-snapshot" in r.of("die")[0]["args"][0]


def test_subnode_builds_nothing_and_registers_nothing(harness: Harness) -> None:
    r = harness.run("stack:post-config", "stack:extra", HOST_TOPOLOGY_ROLE="subnode")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not r.of("disk-image-create") and not r.of("openstack")


def test_runbook_options_and_reuse_of_a_queued_image(harness: Harness, glance: tuple[GlanceServer, Path]) -> None:
    queued = glance[0].create_image("reuse-me", visibility="private")["id"]
    r = harness.run(
        "stack:extra",
        IRONIC_SNAPSHOT_DEVICE="/dev/sdb",
        IRONIC_SNAPSHOT_COMPRESSION="zlib",
        IRONIC_SNAPSHOT_MEMORY_LIMIT="",
        IRONIC_SNAPSHOT_RUNBOOK_NAME="CUSTOM_CAPTURE",
        IRONIC_SNAPSHOT_APPROVE_NODES="False",
        IRONIC_SNAPSHOT_IMAGE_NAME="reuse-me",
        HARNESS_RUNBOOK_EXISTS="1",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    calls = r.openstack()
    queued_image(glance, queued, name="reuse-me")
    status, body = glance[0].request("GET", "/v2/images?name=reuse-me")
    assert status == 200 and len(json.loads(body)["images"]) == 1
    # An existing runbook of that name is replaced.
    assert ["baremetal", "runbook", "delete", "CUSTOM_CAPTURE"] in calls
    args = runbook_step_args(r)
    assert args == {
        "image_id": queued,
        "glance_endpoint": "http://192.0.2.10/image",
        "device": "/dev/sdb",
        "disk_format": "qcow2",
        "compression": "zlib",
        # Empty: left out, so the agent's [snapshot]memory_limit applies.
    }
    assert ["baremetal", "runbook", "trait", "add", "CUSTOM_CAPTURE", "CUSTOM_CAPTURE"] in calls
    assert not any(c[:2] == ["baremetal", "node"] for c in calls)


def test_old_ironic_without_runbook_traits_is_not_fatal(harness: Harness) -> None:
    r = harness.run("stack:extra", HARNESS_FAIL="runbook trait add")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nodes are approved by the trait CUSTOM_SNAPSHOT_DISK" in r.stdout + r.stderr
    assert len([c for c in r.openstack() if c[:3] == ["baremetal", "node", "add"]]) == len(NODES)


def test_runbook_creation_failure_stops_the_stack(harness: Harness) -> None:
    r = harness.run("stack:extra", HARNESS_FAIL="runbook create")
    assert r.returncode != 0
    assert "Could not create the runbook CUSTOM_SNAPSHOT_DISK" in r.of("die")[0]["args"][0]


def test_runbook_placeholder_that_is_not_set_is_named(harness: Harness, tmp_path: Path) -> None:
    steps = tmp_path / "steps.yaml"
    steps.write_text(
        "- interface: deploy\n  step: snapshot_disk\n  order: 1\n"
        "  args:\n    image_id: ${IRONIC_SNAPSHOT_IMAGE_ID}\n    threads: ${IRONIC_SNAPSHOT_THREADS}\n"
    )
    r = harness.run("stack:extra", IRONIC_SNAPSHOT_RUNBOOK_FILE=str(steps))
    assert r.returncode != 0
    assert "IRONIC_SNAPSHOT_THREADS" in r.stderr
    assert not runbook_created(r)
    # Set in local.conf, it is used.
    r = harness.run("stack:extra", IRONIC_SNAPSHOT_RUNBOOK_FILE=str(steps), IRONIC_SNAPSHOT_THREADS="4")
    assert r.returncode == 0, r.stderr[-3000:]
    args = runbook_step_args(r)
    assert set(args) == {"image_id", "threads"} and args["threads"] == "4"


def test_no_glance_endpoint_is_explained(harness: Harness) -> None:
    r = harness.run("stack:extra", GLANCE_URL="")
    assert r.returncode != 0
    assert "IRONIC_SNAPSHOT_GLANCE_ENDPOINT" in r.of("die")[0]["args"][0]


def test_test_config_writes_the_flags_the_tempest_plugin_reads(harness: Harness) -> None:
    from ironic_snapshot.tempest_plugin import config

    r = harness.run("stack:test-config", IRONIC_SNAPSHOT_IMAGE_ID="",
                    IRONIC_SNAPSHOT_DEVICE="/dev/sdb", IRONIC_SNAPSHOT_TEMPEST_NODE="node-1",
                    IRONIC_SNAPSHOT_TEMPEST_SERVER="server-1")
    assert r.returncode == 0, r.stderr[-3000:]
    calls = r.of("iniset")
    assert {c["args"][0] for c in calls} == {str(harness.dest / "tempest" / "etc" / "tempest.conf")}
    assert [c["args"][1:] for c in calls] == [
        ["service_available", "ironic_snapshot", "True"],
        ["baremetal_snapshot", "glance_endpoint", "http://192.0.2.10/image"],
        ["baremetal_snapshot", "runbook", "CUSTOM_SNAPSHOT_DISK"],
        ["baremetal_snapshot", "step_args", "device:/dev/sdb,memory_limit:256M"],
        ["baremetal_snapshot", "node", "node-1"],
        ["baremetal_snapshot", "server", "server-1"],
    ]
    # Every flag written is an option the plugin registers.
    known = {("service_available", config.service_available_option.name)} | {
        (config.snapshot_group.name, o.name) for o in config.snapshot_options}
    assert {(c["args"][1], c["args"][2]) for c in calls} <= known


def test_test_config_writes_nothing_without_tempest(harness: Harness) -> None:
    harness.services = ["ir-api", "ir-cond", "glance"]
    r = harness.run("stack:test-config")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not r.of("iniset")


def test_plugin_does_nothing_without_ironic(harness: Harness) -> None:
    harness.services = ["glance", "tempest"]
    r = harness.run(*ALL_STACK, "unstack", "clean")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.calls == []
    assert not harness.kernel.exists()


def test_unstack_touches_nothing_and_clean_removes_what_the_plugin_made(harness: Harness) -> None:
    r = harness.run("stack:install", "stack:post-config", "unstack")
    assert r.returncode == 0, r.stderr[-3000:]
    before = len(r.calls)
    assert harness.kernel.exists() and (wheel_dir(harness) / WHEEL_NAME).exists()

    r = harness.run("unstack")
    assert r.returncode == 0 and r.calls == []
    assert harness.kernel.exists()

    r = harness.run("clean")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [c["args"] for c in r.of("pip_uninstall")] == [["ironic-snapshot"]]
    assert not wheel_dir(harness).exists()
    assert not harness.kernel.exists() and not harness.ramdisk.exists()
    assert before > 0


def test_clean_keeps_an_operator_ramdisk(harness: Harness) -> None:
    harness.kernel.write_bytes(b"operator kernel")
    harness.ramdisk.write_bytes(b"operator ramdisk")
    r = harness.run("clean", IRONIC_SNAPSHOT_BUILD_RAMDISK="False")
    assert r.returncode == 0, r.stderr[-3000:]
    assert harness.kernel.read_bytes() == b"operator kernel"
    assert harness.ramdisk.read_bytes() == b"operator ramdisk"


def test_explicit_glance_endpoint_wins_over_devstack_glance(harness: Harness) -> None:
    r = harness.run(*ALL_STACK, IRONIC_SNAPSHOT_GLANCE_ENDPOINT="https://glance.example.org:9292")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.of("disk-image-create")[0]["env"]["DIB_IRONIC_SNAPSHOT_GLANCE_ENDPOINT"] == "https://glance.example.org:9292"
    assert runbook_step_args(r)["glance_endpoint"] == "https://glance.example.org:9292"


def test_glance_url_set_after_the_settings_is_used(harness: Harness) -> None:
    # lib/glance may define GLANCE_URL after DevStack sourced our settings:
    # the plugin reads it when the phase runs.
    r = harness.run("stack:extra", GLANCE_URL="", HARNESS_LATE_GLANCE_URL="http://198.51.100.7/image")
    assert r.returncode == 0, r.stderr[-3000:]
    assert runbook_step_args(r)["glance_endpoint"] == "http://198.51.100.7/image"


def test_unreachable_glance_stops_the_stack_with_a_message(harness: Harness, tmp_path: Path) -> None:
    clouds = tmp_path / "nowhere.yaml"
    clouds.write_text(
        "clouds:\n  devstack-admin:\n    auth_type: none\n    auth:\n      endpoint: http://127.0.0.1:9\n"
        "    image_endpoint_override: http://127.0.0.1:9\n"
    )
    r = harness.run("stack:extra", OS_CLIENT_CONFIG_FILE=str(clouds))
    assert r.returncode != 0
    assert "Could not find or create the queued Glance image" in r.of("die")[0]["args"][0]
    assert not runbook_created(r)
