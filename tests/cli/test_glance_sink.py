"""The Glance sink on its own (no capture engine) against a real Glance.

``glance_put`` (rust/snapshot-cli/examples) streams its standard input through
``GlanceSink`` and verifies, or aborts after N bytes. These tests pin down what
Glance is left with in each case.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.stack.glance import GlanceServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def glance_put() -> Path:
    """The ``glance_put`` example, built once."""
    subprocess.run(["cargo", "build", "--locked", "-q", "--release", "-p", "snapshot-cli",
                    "--example", "glance_put"], cwd=REPO, check=True)
    return REPO / "target" / "release" / "examples" / "glance_put"


def put(tool: Path, endpoint: str, image_id: str, data: bytes, *extra: str,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(tool), endpoint, image_id, *extra], input=data,
                          capture_output=True, timeout=300, env=env)


@pytest.mark.parametrize("endpoint_form", ["{}", "{}/", "{}/v2", "{}/v2/"])
def test_upload_becomes_active_with_matching_digests(glance: GlanceServer, glance_put: Path,
                                                     endpoint_form: str) -> None:
    # Not a multiple of the 1 MiB chunk, so the last partial chunk is covered.
    data = os.urandom(3 * 1024 * 1024 + 4321)
    image = glance.create_image("sink", disk_format="raw")
    proc = put(glance_put, endpoint_form.format(glance.endpoint), image["id"], data)
    assert proc.returncode == 0, proc.stderr.decode()
    record = glance.get_image(image["id"])
    assert record["status"] == "active"
    assert record["size"] == len(data)
    assert record["checksum"] == hashlib.md5(data).hexdigest()
    assert record["os_hash_algo"] == "sha512"
    assert record["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert glance.download(image["id"]) == data


def test_abort_leaves_image_queued_without_data(glance: GlanceServer, glance_put: Path) -> None:
    data = os.urandom(6 * 1024 * 1024)
    image = glance.create_image("aborted", disk_format="raw")
    proc = put(glance_put, glance.endpoint, image["id"], data, "--abort-after", str(4 << 20))
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"aborted" in proc.stdout
    record = glance.get_image(image["id"])
    assert record["status"] == "queued", record
    assert record["size"] is None and record["checksum"] is None
    # Queued again means it can still be filled completely.
    proc = put(glance_put, glance.endpoint, image["id"], data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert glance.get_image(image["id"])["status"] == "active"


def test_active_image_is_refused(glance: GlanceServer, glance_put: Path) -> None:
    image = glance.create_image("full", disk_format="raw")
    assert glance.upload(image["id"], b"x" * 1000) == 204
    proc = put(glance_put, glance.endpoint, image["id"], b"y" * 1000)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert f"Glance image {image['id']} is active, not queued" in err, err
    assert glance.download(image["id"]) == b"x" * 1000


def test_unknown_image_says_create_it_first(glance: GlanceServer, glance_put: Path) -> None:
    missing = "3f1e7a52-0000-4000-8000-000000000000"
    proc = put(glance_put, glance.endpoint, missing, b"z")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "Glance answered 404" in err and "create the image first" in err, err


def test_unreachable_glance_is_a_connection_error(glance_put: Path) -> None:
    from tests.stack.glance import free_port
    proc = put(glance_put, f"http://127.0.0.1:{free_port()}", "3f1e7a52-0000-4000-8000-000000000001", b"z")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "Glance could not be reached during lookup of image" in err, err
    assert "caused by:" in err


def test_token_is_sent_but_never_shown(glance: GlanceServer, glance_put: Path) -> None:
    # No-auth Glance ignores the token; what matters is that no output shows it.
    token = "gAAAAA-test-token-" + os.urandom(8).hex()
    image = glance.create_image("token", disk_format="raw")
    env = dict(os.environ, OS_TOKEN=token, RUST_LOG="debug")
    proc = put(glance_put, glance.endpoint, image["id"], b"t" * 5000, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert token.encode() not in proc.stdout + proc.stderr


def test_glance_killed_mid_upload(tmp_path: Path, glance_put: Path) -> None:
    """SIGKILL of Glance while data flows: a connection error, and no active image."""
    from tests.stack.glance import start_glance
    with start_glance(tmp_path / "glance") as server:
        image = server.create_image("killed", disk_format="raw")
        proc = subprocess.Popen([str(glance_put), server.endpoint, image["id"]],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        chunk = os.urandom(1 << 20)
        assert proc.stdin is not None
        # Feed 8 MiB, make sure Glance has started storing, then kill it.
        for _ in range(8):
            proc.stdin.write(chunk)
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while server.get_image(image["id"])["status"] != "saving":
            assert time.monotonic() < deadline, "Glance never started saving"
            time.sleep(0.1)
        server.kill()
        try:
            for _ in range(64):
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err.decode()
        text = err.decode()
        assert "Glance could not be reached during upload of image" in text, text
    # Glance restarted on the same database: the image is not active.
    with start_glance(tmp_path / "glance", port=None) as again:
        status = again.get_image(image["id"])["status"]
        assert status != "active", status
