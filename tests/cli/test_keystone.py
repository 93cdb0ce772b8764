"""The CLI against a Keystone-protected Glance: token and image endpoint from
Keystone v3 (password, application credential or token), found in the
catalog; credentials from ``OS_*`` variables or from ``clouds.yaml``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack.glance import GlanceServer, free_port, start_glance
from tests.stack.keystone import REGION, KeystoneServer, start_keystone

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


def create_app_credential(keystone: KeystoneServer, user: str, token: str, name: str) -> dict:
    """A new application credential of ``user`` (its id and secret among the fields)."""
    status, _, raw = keystone.request("POST", f"/v3/users/{user}/application_credentials",
                                      {"application_credential": {"name": name}}, token=token)
    assert status == 201, raw
    return json.loads(raw)["application_credential"]


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
    credential = create_app_credential(keystone, user, token, "cli-test")
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


# -- clouds.yaml ---------------------------------------------------------------------------


def bare_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """This process's environment without any ``OS_*`` variable, HOME in ``tmp_path``
    (so no ``~/.config/openstack`` of the machine is read), plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(HOME=str(tmp_path), **variables)
    env.pop("XDG_CONFIG_HOME", None)
    return env


def write_yaml(path: Path, clouds: dict) -> Path:
    # JSON is YAML: no YAML writer needed in the test environment.
    path.write_text(json.dumps({"clouds": clouds}, indent=2))
    return path


def password_cloud(keystone: KeystoneServer, password: str) -> dict:
    return {"auth": {"auth_url": keystone.auth_url, "username": "carol", "password": password,
                     "user_domain_name": "Default", "project_name": "snap",
                     "project_domain_id": "default"},
            "region_name": REGION, "interface": "public", "identity_api_version": 3}


def assert_uploaded(glance: GlanceServer, token: str, image_id: str, proc: subprocess.CompletedProcess,
                    source: Path) -> None:
    """The capture succeeded, the image is active and Glance's digests are the report's and the source's."""
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    record = image_record(glance, token, image_id)
    data = source.read_bytes()
    assert record["status"] == "active"
    assert record["size"] == report["image_size"] == len(data)
    assert record["os_hash_algo"] == "sha512"
    assert record["os_hash_value"] == report["sha512"] == hashlib.sha512(data).hexdigest()
    assert record["checksum"] == report["md5"] == hashlib.md5(data).hexdigest()


def test_clouds_yaml_alone(cli_binary: Path, cloud, source: Path, tmp_path: Path) -> None:
    """OS_CLOUD and OS_CLIENT_CONFIG_FILE are the only OS_* variables: the rest comes from the file."""
    keystone, glance, _ = cloud
    token = keystone.password_token("carol", PASSWORD, project="snap")
    image_id = create_image(glance, token)
    config = write_yaml(tmp_path / "my-clouds.yaml", {
        "other": {"auth": {"auth_url": "http://127.0.0.1:9/v3"}},
        "lab": password_cloud(keystone, PASSWORD)})
    env = bare_env(tmp_path, OS_CLOUD="lab", OS_CLIENT_CONFIG_FILE=str(config))
    proc = capture(cli_binary, source, image_id, env)
    assert_uploaded(glance, token, image_id, proc, source)
    assert PASSWORD.encode() not in proc.stdout + proc.stderr


def test_clouds_yaml_in_working_folder_with_secure_yaml(cli_binary: Path, cloud, source: Path,
                                                        tmp_path: Path) -> None:
    """./clouds.yaml holds the application credential's id, ./secure.yaml its secret; --os-cloud names it."""
    keystone, glance, user = cloud
    token = keystone.password_token("carol", PASSWORD, project="snap")
    credential = create_app_credential(keystone, user, token, "cli-yaml")
    image_id = create_image(glance, token)
    (tmp_path / "clouds.yaml").write_text(
        "clouds:\n"
        "  lab:\n"
        "    auth_type: v3applicationcredential\n"
        "    auth:\n"
        f"      auth_url: {keystone.auth_url}\n"
        f"      application_credential_id: {credential['id']}\n"
        f"    region_name: {REGION}\n")
    (tmp_path / "secure.yaml").write_text(
        f"clouds:\n  lab:\n    auth:\n      application_credential_secret: '{credential['secret']}'\n")
    proc = subprocess.run([str(cli_binary), "capture", str(source), "--glance-image", image_id,
                           "--format", "raw", "--json", "--os-cloud", "lab"],
                          capture_output=True, env=bare_env(tmp_path), cwd=tmp_path, timeout=300)
    assert_uploaded(glance, token, image_id, proc, source)
    assert credential["secret"].encode() not in proc.stdout + proc.stderr


def test_clouds_yaml_token_is_rescoped_by_keystone(cli_binary: Path, cloud, source: Path,
                                                   tmp_path: Path) -> None:
    """auth_type token: the token of the file is exchanged for one with the catalog."""
    keystone, glance, _ = cloud
    token = keystone.password_token("carol", PASSWORD, project="snap")
    image_id = create_image(glance, token)
    config = write_yaml(tmp_path / "clouds.yaml", {"lab": {
        "auth_type": "token",
        "auth": {"auth_url": keystone.auth_url, "token": token, "project_name": "snap",
                 "project_domain_id": "default"}}})
    env = bare_env(tmp_path, OS_CLOUD="lab", OS_CLIENT_CONFIG_FILE=str(config))
    proc = capture(cli_binary, source, image_id, env)
    assert_uploaded(glance, token, image_id, proc, source)
    assert token.encode() not in proc.stdout + proc.stderr


def test_environment_wins_over_clouds_yaml(cli_binary: Path, cloud, source: Path, tmp_path: Path) -> None:
    """A wrong password in the file, the right one in OS_PASSWORD: the variable counts."""
    keystone, glance, _ = cloud
    token = keystone.password_token("carol", PASSWORD, project="snap")
    image_id = create_image(glance, token)
    config = write_yaml(tmp_path / "clouds.yaml", {"lab": password_cloud(keystone, "stale-" + PASSWORD)})
    env = bare_env(tmp_path, OS_CLOUD="lab", OS_CLIENT_CONFIG_FILE=str(config))
    proc = capture(cli_binary, source, image_id, env)
    assert proc.returncode == 5, proc.stderr.decode()
    assert "Keystone answered 401 to authentication" in proc.stderr.decode()
    env["OS_PASSWORD"] = PASSWORD
    proc = capture(cli_binary, source, image_id, env)
    assert_uploaded(glance, token, image_id, proc, source)


def test_unknown_cloud_is_usage_error(cli_binary: Path, cloud, source: Path, tmp_path: Path) -> None:
    keystone, _, _ = cloud
    config = write_yaml(tmp_path / "clouds.yaml", {"lab": password_cloud(keystone, PASSWORD),
                                                   "prod": password_cloud(keystone, PASSWORD)})
    env = bare_env(tmp_path, OS_CLOUD="labb", OS_CLIENT_CONFIG_FILE=str(config))
    proc = capture(cli_binary, source, "0b7f7cde-0000-4000-8000-00000000abcd", env)
    assert proc.returncode == 2, proc.stderr.decode()
    err = proc.stderr.decode()
    assert "Cloud labb is not in" in err and str(config) in err and "clouds found: lab, prod" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert PASSWORD not in err
