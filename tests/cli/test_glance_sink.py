"""The Glance sink against a real Glance, on its own and behind a real proxy.

``glance_put`` (rust/snapshot-cli/examples) streams its standard input through
``GlanceSink`` and verifies, or aborts after N bytes. These tests pin down what
Glance is left with in each case, and what the error says when Glance refuses.
The proxy test runs the whole CLI through Debian's nginx.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack.glance import GlanceServer, start_glance

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


def finish(proc: subprocess.Popen, timeout: float = 120) -> bytes:
    """Closes the tool's standard input, waits for its end, returns its stderr.

    The tool may stop reading early (it failed): a broken pipe is expected.
    Not ``communicate()``, which flushes standard input again and raises
    ValueError once it is closed, whenever the tool took all the data.
    """
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass
    proc.wait(timeout=timeout)
    return proc.stderr.read()


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
        except BrokenPipeError:
            pass
        err = finish(proc)
        assert proc.returncode == 1, err.decode()
        text = err.decode()
        assert "Glance could not be reached during upload of image" in text, text
    # Glance restarted on the same database: the image is not active.
    with start_glance(tmp_path / "glance", port=None) as again:
        status = again.get_image(image["id"])["status"]
        assert status != "active", status


#: ``image_size_cap`` of ``strict_glance``.
SIZE_CAP = 12 << 20
#: ``user_storage_quota`` of ``strict_glance``.
STORAGE_QUOTA = 16 << 20


@pytest.fixture(scope="module")
def strict_glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceServer]:
    """A real Glance that refuses uploads the ways a cloud's does.

    ``image_size_cap`` and ``user_storage_quota`` make it answer 413 in the
    middle of an upload, and a policy refuses data for images named
    ``forbidden`` (403 before a byte of the body is read).
    """
    workdir = tmp_path_factory.mktemp("strict-glance")
    policy = workdir / "policy.yaml"
    policy.write_text(""""upload_image": "not 'forbidden':%(name)s"\n""")
    with start_glance(workdir / "glance", extra_conf={
        "DEFAULT": {"image_size_cap": str(SIZE_CAP), "user_storage_quota": str(STORAGE_QUOTA)},
        "oslo_policy": {"policy_file": str(policy)},
    }) as server:
        yield server


def refused(proc: subprocess.CompletedProcess, status: int) -> str:
    """The error line of a ``glance_put`` run Glance refused with ``status``."""
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert f"Glance answered {status} to upload of image" in err, err
    # Not mistaken for a dead Glance.
    assert "could not be reached" not in err and "receiver is gone" not in err, err
    return err


def test_size_cap_answer_mid_upload_is_shown(strict_glance: GlanceServer, glance_put: Path) -> None:
    """Glance stops reading at its size cap and answers 413: that answer is the error."""
    image = strict_glance.create_image("capped", disk_format="raw")
    proc = put(glance_put, strict_glance.endpoint, image["id"], os.urandom(SIZE_CAP + (8 << 20)))
    err = refused(proc, 413)
    assert "The incoming image is too large" in err, err
    # webob's status line is not repeated as if it were Glance's message.
    assert "Request Entity Too Large" not in err, err
    assert strict_glance.get_image(image["id"])["status"] == "queued"


def test_storage_quota_answer_mid_upload_is_shown(strict_glance: GlanceServer,
                                                  glance_put: Path) -> None:
    first = strict_glance.create_image("quota-1", disk_format="raw")
    second = strict_glance.create_image("quota-2", disk_format="raw")
    try:
        proc = put(glance_put, strict_glance.endpoint, first["id"], os.urandom(10 << 20))
        assert proc.returncode == 0, proc.stderr.decode()
        # 10 MiB more would pass the quota of 16 MiB: Glance cuts it at 6.
        proc = put(glance_put, strict_glance.endpoint, second["id"], os.urandom(10 << 20))
        err = refused(proc, 413)
        assert "Image exceeds the storage quota" in err and "bytes remaining" in err, err
        # Glance 33 leaves this one in "saving"; what matters is that it is not active.
        assert strict_glance.get_image(second["id"])["status"] != "active"
    finally:
        # Free the quota for the other tests.
        strict_glance.delete_image(first["id"])
        strict_glance.delete_image(second["id"])


def test_policy_refusal_before_the_body_is_shown(strict_glance: GlanceServer,
                                                 glance_put: Path) -> None:
    """403 before Glance reads a byte: the lookup was allowed, the upload is not."""
    image = strict_glance.create_image("forbidden", disk_format="raw")
    proc = put(glance_put, strict_glance.endpoint, image["id"], os.urandom(8 << 20))
    err = refused(proc, 403)
    assert "not authorized to complete upload_image action" in err, err


def test_server_error_before_the_body_is_shown(glance: GlanceServer, glance_put: Path) -> None:
    """A store that cannot take the data: Glance answers 500 before reading the body.

    A file left in the store under the image's id makes the filesystem store
    refuse to write (Glance turns that into a 500): a real Glance producing
    the fault, so no fake server is needed.
    """
    image = glance.create_image("store-broken", disk_format="raw")
    leftover = glance.store_dir / image["id"]
    leftover.write_bytes(b"left over")
    try:
        proc = put(glance_put, glance.endpoint, image["id"], os.urandom(8 << 20))
    finally:
        leftover.unlink()
    err = refused(proc, 500)
    assert "The server has either erred" in err, err
    assert glance.get_image(image["id"])["status"] == "queued"


def test_image_filled_after_the_check_is_a_conflict(glance: GlanceServer, glance_put: Path) -> None:
    """The image was queued when checked and filled by someone else before the first byte.

    Glance refuses the status change at once (409, body unread) and closes the
    connection, which the kernel resets. Either the client reads that answer,
    or it notices the reset first (hyper then reports only the broken body
    write) and the sink's lookup of the image says it was filled meanwhile.
    Both tell the user what happened; "could not be reached" does not.
    """
    image = glance.create_image("raced", disk_format="raw")
    proc = subprocess.Popen([str(glance_put), glance.endpoint, image["id"]], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "glance_put never said it opened the sink"
        assert proc.stdout.readline() == b"opened\n"
        assert glance.upload(image["id"], b"someone else") == 204
        try:
            proc.stdin.write(os.urandom(8 << 20))
        except BrokenPipeError:
            pass
        err = finish(proc)
    finally:
        proc.kill()
        proc.wait()
    text = err.decode()
    assert proc.returncode == 1, text
    answered = ("Glance answered 409 to upload of image" in text
                and "Image status transition from active to saving is not allowed" in text)
    looked_up = (f"Glance broke off the upload of image {image['id']} without an answer" in text
                 and f"image {image['id']} is now active, so someone else filled it" in text)
    assert answered or looked_up, text
    assert "could not be reached" not in text, text
    assert glance.download(image["id"]) == b"someone else"


class _ResettingGlance:
    """A tiny real HTTP server standing in for a Glance whose answer is lost.

    Glance itself always answers; what the sink must survive is the client
    losing that answer to a connection reset, which a real Glance produces
    only by chance. This server answers image lookups like Glance (``queued``
    until an upload was tried, then ``after``), and breaks every upload off
    after 1 MiB of body with a reset (SO_LINGER 0), without a byte of answer.
    """

    def __init__(self, after: str) -> None:
        import socket
        import threading
        self.after = after
        self.uploaded: set[str] = set()
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn) -> None:  # noqa: ANN001 - a socket
        import socket
        import struct
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            method, path = data.split(b" ", 2)[:2]
            image_id = path.decode().split("/")[3]
            if method == b"GET":
                status = self.after if image_id in self.uploaded else "queued"
                if status == "gone":
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                    return
                body = json.dumps({"id": image_id, "status": status}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(body), body))
                return
            self.uploaded.add(image_id)
            received = len(data)
            while received < (1 << 20):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                received += len(chunk)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self) -> None:
        self._socket.close()


@pytest.mark.parametrize(("after", "expect"), [
    ("active", "is now active, so someone else filled it after the check"),
    ("queued", "is still queued and holds no data: Glance refused the upload before storing it"),
    ("saving", "is saving: Glance stopped storing this upload part way"),
    ("gone", "no longer exists: it was deleted during the upload"),
])
def test_upload_reset_without_an_answer_says_what_the_image_shows(glance_put: Path, after: str,
                                                                   expect: str) -> None:
    """The connection is reset mid-body and no answer can be read: the image's state says why."""
    server = _ResettingGlance(after)
    try:
        image_id = "3f1e7a52-0000-4000-8000-00000000000a"
        proc = put(glance_put, server.endpoint, image_id, os.urandom(8 << 20))
    finally:
        server.close()
    text = proc.stderr.decode()
    assert proc.returncode == 1, text
    assert (f"Glance broke off the upload of image {image_id} without an answer that could be "
            f"read: image {image_id} {expect}") in text, text
    # The transport error stays in the chain, for whoever digs deeper.
    assert "caused by:" in text and ("reset" in text.lower() or "broken pipe" in text.lower()), text


#: nginx's ``client_body_timeout`` in front of Glance (60 s by default; short here).
BODY_TIMEOUT = 2


def _log_text_disk(path: Path, size: int) -> None:
    """A disk of seeded log-like text: zstd at a high level compresses it slowly."""
    rng = random.Random(7)
    words = ("kernel systemd sshd nginx glance accepted session opened closed for user root "
             "from port error warning info debug block device").split()
    lines = []
    total = 0
    while total < size:
        line = (f"Dec  1 {rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d} "
                f"node{rng.randrange(100)} {' '.join(rng.choice(words) for _ in range(8))} "
                f"id={rng.getrandbits(48):x}\n").encode()
        lines.append(line)
        total += len(line)
    path.write_bytes(b"".join(lines)[:size])


def test_upload_through_proxy_outlasts_body_timeout(cli_binary: Path, glance: GlanceServer,
                                                    source_dir: Path, tmp_path: Path) -> None:
    """A real nginx in front of Glance cuts request bodies idle for ``BODY_TIMEOUT`` s.

    The qcow2 header goes first and is known only once the whole disk was
    compressed (here: zstd level 19 on one thread, several times the
    timeout). The request must start with the first byte, not before the
    compression: then the upload passes the proxy and the digests verify.
    """
    from tests.stack.nginx import start_nginx
    source = source_dir / "text.img"
    # 40 MiB of text at zstd 19 on one thread: about 4 MB/s when the machine is
    # idle, so over 3 * BODY_TIMEOUT seconds with room to spare (12 MiB took
    # only 4.6 s on a quiet machine).
    _log_text_disk(source, 40 << 20)
    image = glance.create_image("through-nginx")
    with start_nginx(tmp_path / "nginx", glance.endpoint, body_timeout=BODY_TIMEOUT) as proxy:
        proc = subprocess.run([str(cli_binary), "capture", str(source), "--glance-image", image["id"],
                               "--glance-endpoint", proxy.endpoint, "--threads", "1", "--level", "19",
                               "--memory-limit", "256M", "--json"],
                              capture_output=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr.decode() + "\n" + proxy.log_tail()
        access = proxy.access_log.read_text()
    report = json.loads(proc.stdout)
    # One pass (the image fits the spool), and slow enough that a request
    # opened before the compression would have idled past the timeout.
    assert report["passes"] == 1, report
    assert report["seconds"] > 3 * BODY_TIMEOUT, report
    assert f"PUT /v2/images/{image['id']}/file HTTP/1.1\" 204" in access, access
    record = glance.get_image(image["id"])
    assert record["status"] == "active"
    assert record["checksum"] == report["md5"]
    assert record["os_hash_value"] == report["sha512"]
    stored = tmp_path / "stored.qcow2"
    stored.write_bytes(glance.download(image["id"]))
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == report["sha256"]
    subprocess.run(["qemu-img", "check", "-q", str(stored)], check=True)
    subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", str(source), str(stored)],
                   check=True)


#: How far a stream's peak RSS may pass its --memory-limit (binary, stacks, allocator).
RSS_SLACK = 64 << 20


def test_upload_memory_stays_within_the_limit(cli_binary: Path, glance: GlanceServer,
                                              source_dir: Path) -> None:
    """The memory limit bounds the metadata too, not only the spooled data.

    A 2 TiB sparse disk with a block of data in each 512 MiB (4096 L2 tables
    of 64 KiB: 256 MiB of metadata for 4096 clusters) and 320 MiB of random
    data, more than the limit leaves to spool: two passes. Peak RSS stays
    within the limit plus 64 MiB (the CLI of before took 412 MiB at 288M:
    its spool and layout, and in pass 2 a second layout, all beside the
    limit). Below the metadata the limit is refused, naming the minimum,
    before anything is read or sent.
    """
    source = source_dir / "spread.img"
    with open(source, "wb") as disk:
        disk.truncate(2 << 40)
        for n in range(4096):
            disk.seek(n * (512 << 20) + 8192)
            disk.write(b"block %d " % n * 400)
        disk.seek((1 << 30) + (1 << 20))
        for _ in range(320):
            disk.write(os.urandom(1 << 20))

    def command(image_id: str, limit: str) -> list[str]:
        return [str(cli_binary), "capture", str(source), "--glance-image", image_id,
                "--glance-endpoint", glance.endpoint, "--memory-limit", limit, "--json"]

    small = glance.create_image("spread-small")
    proc = subprocess.run(command(small["id"], "200M"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "Invalid option --memory-limit: 200.0 MiB cannot hold the metadata" in proc.stderr, proc.stderr
    assert "give at least 257M" in proc.stderr, proc.stderr
    assert glance.get_image(small["id"])["status"] == "queued"

    image = glance.create_image("spread")
    limit = 288 << 20
    # GNU time, not this process's wait4: a child forked from pytest counts
    # pytest's own pages as resident until it execs.
    rss = source_dir / "rss"
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss)] + command(image["id"], "288M"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["passes"] == 2, report
    peak = int(rss.read_text().split()[-1]) * 1024
    assert peak <= limit + RSS_SLACK, f"peak RSS {peak >> 20} MiB, limit 288 MiB + {RSS_SLACK >> 20}"
    record = glance.get_image(image["id"])
    assert record["status"] == "active"
    assert record["checksum"] == report["md5"] and record["os_hash_value"] == report["sha512"]
