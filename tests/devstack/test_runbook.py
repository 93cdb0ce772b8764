"""The runbook the plugin registers, judged by Ironic's and the step's own rules.

The plugin renders devstack/files/snapshot-runbook.yaml (see test_plugin);
here the rendered steps are validated with Ironic's runbook JSON schemas (both
the pre-1.112 one, where the name must be a trait, and the 1.112 one) and
against the argsinfo of the real SnapshotHardwareManager.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.stack.glance import GlanceServer

from .harness import REPO, Harness

RUNBOOK_FILE = REPO / "devstack" / "files" / "snapshot-runbook.yaml"


@pytest.fixture(scope="module")
def manager() -> Any:
    from ironic_python_agent import config

    config.populate_config()
    try:
        from ironic_snapshot import hardware_manager
    except ImportError:
        # Not pip-installed in this virtualenv: the source tree serves (the
        # module loads the Rust engine lazily).
        sys.path.insert(0, str(REPO / "python"))
        from ironic_snapshot import hardware_manager
    return hardware_manager


@pytest.fixture
def clouds(glance: tuple[GlanceServer, Path]) -> Path:
    return glance[1]


def rendered(tmp_path: Path, clouds: Path, **env: str) -> tuple[str, list[dict[str, Any]]]:
    r = Harness(tmp_path / "h", env={"OS_CLIENT_CONFIG_FILE": str(clouds)}).run("stack:extra", **env)
    assert r.returncode == 0, r.stderr[-3000:]
    (create,) = [c for c in r.of("openstack") if "steps" in c]
    args = create["args"]
    return args[args.index("--name") + 1], create["steps"]


@pytest.mark.parametrize("device", ["", "/dev/nvme0n1"])
def test_rendered_runbook_passes_ironic_schemas(tmp_path: Path, clouds: Path, device: str) -> None:
    # Imported here: Ironic's API modules are heavy and register options.
    from ironic.api.controllers.v1 import runbook as ironic_runbook

    name, steps = rendered(tmp_path, clouds, IRONIC_SNAPSHOT_DEVICE=device)
    body = {"name": name, "steps": steps}
    # Before API 1.112 the runbook name must be a valid trait.
    jsonschema.validate(body, ironic_runbook.RUNBOOK_SCHEMA)
    jsonschema.validate(body, ironic_runbook.RUNBOOK_SCHEMA_V112)
    assert name.startswith("CUSTOM_")


@pytest.mark.parametrize("image_id", [None, ""], ids=["plugin-image", "agent-config-image"])
def test_rendered_runbook_matches_the_step_the_agent_offers(
    tmp_path: Path, glance: tuple[GlanceServer, Path], manager: Any, image_id: str | None
) -> None:
    server, clouds = glance
    image_name = f"runbook-target-{tmp_path.name}"
    env = {"IRONIC_SNAPSHOT_DEVICE": "/dev/sda", "IRONIC_SNAPSHOT_IMAGE_NAME": image_name}
    if image_id is not None:
        env["IRONIC_SNAPSHOT_IMAGE_ID"] = image_id
    r = Harness(tmp_path / "h", env={"OS_CLIENT_CONFIG_FILE": str(clouds)}).run("stack:extra", **env)
    assert r.returncode == 0, r.stderr[-3000:]
    (create,) = [c for c in r.of("openstack") if "steps" in c]
    steps = create["steps"]
    (offered,) = manager.SnapshotHardwareManager().get_service_steps({}, [])
    (step,) = steps
    assert (step["interface"], step["step"]) == (offered["interface"], offered["step"])
    argsinfo = offered["argsinfo"]
    assert set(step["args"]) <= set(argsinfo), set(step["args"]) - set(argsinfo)
    required = {k for k, v in argsinfo.items() if v.get("required")}
    assert required <= set(step["args"])
    assert step["args"]["device"] == "/dev/sda"
    status, body = server.request("GET", f"/v2/images?name={image_name}")
    assert status == 200
    made = [image["id"] for image in json.loads(body)["images"]]
    if image_id is None:
        # Unset: the plugin made a queued image and the runbook fills it.
        assert made == [step["args"]["image_id"]]
    else:
        # Set empty: no image in the runbook, none made by the plugin: the
        # step creates one per run with the agent's configured credential.
        assert "image_id" not in step["args"]
        assert made == []


def test_runbook_file_holds_no_secret() -> None:
    steps = yaml.safe_load(RUNBOOK_FILE.read_text())
    for step in steps:
        for key in step.get("args", {}):
            assert not any(word in key for word in ("token", "password", "secret")), key
