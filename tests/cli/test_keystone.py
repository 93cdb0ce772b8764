"""The CLI against a Keystone-protected Glance: token and image endpoint from
Keystone v3 (password or application credential), found in the catalog."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack.glance import GlanceServer, free_port, start_glance
from tests.stack.keystone import KeystoneServer, start_keystone

PASSWORD = "cli-pass-" + os.urandom(6).hex()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeystoneServer, GlanceServer, str]]:
    """Keystone, a Keystone-protected Glance in its catalog, and user carol of project snap."""
    root = tmp_path_factory.mktemp("cloud")
    glance_port = free_port()
    with contextlib.ExitStack() as stack:
        keystone = stack.enter_context(start_keystone(root / "keystone"))
        keystone.register_service("image", "glance", f"http://127.0.0.1:{glance_port}")
        project = keystone.create_project("snap")
        user = keystone.create_user("carol", PASSWORD, project=project, role="member")
        glance = stack.enter_context(start_glance(
            root / "glance", flavor="keystone", port=glance_port,
            extra_conf={"keystone_authtoken": keystone.authtoken_conf("glance", service_type="image")}))
        yield keystone, glance, user


def create_image(glance: GlanceServer, token: str) -> str:
    status, raw = glance.request("POST", "/v2/images", {
        "name": "ks", "disk_format": "raw", "container_format": "bare"}, token=token)
    assert status == 201, raw
    return json.loads(raw)["id"]


def image_record(glance: GlanceServer, token: str, image_id: str) -> dict:
    status, raw = glance.request("GET", f"/v2/images/{image_id}", token=token)
    assert status == 200, raw
    return json.loads(raw)


def capture(cli_binary: Path, source: Path, image_id: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(cli_binary), "capture", str(source), "--glance-image", image_id,
                           "--format", "raw", "--json"], capture_output=True, env=env, timeout=300)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src.img"
    path.write_bytes(os.urandom(2 << 20))
    return path


def test_password_auth_finds_endpoint_in_catalog(cli_binary: Path, cloud, source: Path) -> None:
    keystone, glance, _ = cloud
    token = keystone.password_token("carol", PASSWORD, project="snap")
    image_id = create_image(glance, token)
    env = keystone.env("carol", PASSWORD, project="snap")
    proc = capture(cli_binary, source, image_id, env)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    record = image_record(glance, token, image_id)
    assert record["status"] == "active"
    assert record["os_hash_value"] == report["sha512"]
    assert PASSWORD.encode() not in proc.stdout + proc.stderr


def test_application_credential(cli_binary: Path, cloud, source: Path) -> None:
    keystone, glance, user = cloud
    token = keystone.password_token("carol", PASSWORD, project="snap")
    status, _, raw = keystone.request("POST", f"/v3/users/{user}/application_credentials",
                                      {"application_credential": {"name": "cli-test"}}, token=token)
    assert status == 201, raw
    credential = json.loads(raw)["application_credential"]
    image_id = create_image(glance, token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_AUTH_URL=keystone.auth_url, OS_APPLICATION_CREDENTIAL_ID=credential["id"],
               OS_APPLICATION_CREDENTIAL_SECRET=credential["secret"])
    proc = capture(cli_binary, source, image_id, env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert image_record(glance, token, image_id)["status"] == "active"
    assert credential["secret"].encode() not in proc.stdout + proc.stderr


def test_wrong_password_is_exit_5_without_the_password(cli_binary: Path, cloud, source: Path) -> None:
    keystone, glance, _ = cloud
    token = keystone.password_token("carol", PASSWORD, project="snap")
    image_id = create_image(glance, token)
    env = keystone.env("carol", "wrong-" + PASSWORD, project="snap")
    proc = capture(cli_binary, source, image_id, env)
    assert proc.returncode == 5, proc.stderr.decode()
    err = proc.stderr.decode()
    assert "Keystone answered 401 to authentication" in err, err
    assert PASSWORD not in err
    assert image_record(glance, token, image_id)["status"] == "queued"


def test_expired_or_bogus_token_is_refused_by_glance(cli_binary: Path, cloud, source: Path) -> None:
    keystone, glance, _ = cloud
    token = keystone.password_token("carol", PASSWORD, project="snap")
    image_id = create_image(glance, token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_TOKEN="gAAAAA-bogus-" + os.urandom(8).hex(), OS_IMAGE_ENDPOINT=glance.endpoint)
    proc = capture(cli_binary, source, image_id, env)
    assert proc.returncode == 5, proc.stderr.decode()
    err = proc.stderr.decode()
    assert "Glance answered 401" in err and "check the token" in err, err
    assert env["OS_TOKEN"] not in err
