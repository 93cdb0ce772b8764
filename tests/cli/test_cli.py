"""The ``ironic-snapshot`` CLI on real disks: GPT + ext4 built through loop
mounts, images judged by ``qemu-img check`` and ``qemu-img compare``, uploads
into a real Glance."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.blockdev import loop_device, mounted
from tests.stack.glance import GlanceServer, start_glance

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                reason="qemu-img is the judge of every image: install qemu-utils")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def digests(path: Path) -> dict[str, str]:
    hs = {"md5": hashlib.md5(), "sha256": hashlib.sha256(), "sha512": hashlib.sha512()}
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for h in hs.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hs.items()}


def cli(binary: Path, *args: object, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Runs the CLI; stdout and stderr are captured unless redirected."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run([str(binary), *map(str, args)], timeout=timeout, **kwargs)


#: Copy free space too, so that qemu-img compare can demand identical disks.
#: (By default free space of ext4 and the journal of a clean ext4 are not
#: copied: see test_default_capture_keeps_every_file.)
WHOLE = ("--no-skip-free-space",)


def judge(source: Path, image: Path, fmt: str = "qcow2") -> None:
    """qemu-img check (qcow2) and compare against the source: the verdict on an image."""
    if fmt == "qcow2":
        check = subprocess.run(["qemu-img", "check", "-f", "qcow2", str(image)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", fmt, str(source), str(image)],
                             capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr


@pytest.mark.parametrize("compression", ["zstd", "zlib", "none"])
def test_capture_partitioned_disk(cli_binary: Path, make_disk, tmp_path: Path, compression: str) -> None:
    disk = make_disk(size_mib=96, random_mib=3)
    before = sha256(disk.path)
    out = tmp_path / "disk.qcow2"
    proc = cli(cli_binary, "capture", disk.path, "-o", out, "--compression", compression, "--json",
               *WHOLE)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    judge(disk.path, out)
    assert sha256(disk.path) == before, "the source changed"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(out)],
                                     capture_output=True, check=True).stdout)
    assert info["virtual-size"] == report["virtual_size"] == disk.path.stat().st_size
    assert report["image_size"] == out.stat().st_size
    assert {k: report[k] for k in ("md5", "sha256", "sha512")} == digests(out)
    assert report["format"] == "qcow2" and report["compression"] == compression
    if compression != "none":
        assert out.stat().st_size < disk.path.stat().st_size / 3
    # stdout carried exactly one JSON object and nothing else.
    assert proc.stdout.decode().strip().count("\n") == 0


def test_default_capture_keeps_every_file(cli_binary: Path, make_disk, tmp_path: Path) -> None:
    """Skipping free space (the default) keeps every file and a clean filesystem."""
    disk = make_disk(size_mib=96, random_mib=3)
    out = tmp_path / "disk.qcow2"
    proc = cli(cli_binary, "capture", disk.path, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["bytes_read"] < disk.path.stat().st_size / 2, "free space should not be read"
    check = subprocess.run(["qemu-img", "check", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    raw = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(out), str(raw)], check=True)
    for index, (start, size) in enumerate(disk.partitions):
        with loop_device(raw, start, size) as device:
            fsck = subprocess.run(["e2fsck", "-fn", device], capture_output=True, text=True)
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr
            where = tmp_path / f"m{index}"
            where.mkdir()
            subprocess.run(["mount", "-o", "ro,noload", device, str(where)], check=True)
            try:
                for rel, content in disk.files[index].items():
                    assert (where / rel).read_bytes() == content, rel
                assert os.readlink(where / "etc" / "hostname.link") == "hostname"
            finally:
                subprocess.run(["umount", str(where)], check=False)


def test_raw_format(cli_binary: Path, make_disk, tmp_path: Path) -> None:
    disk = make_disk(size_mib=64, random_mib=1)
    out = tmp_path / "disk.raw"
    proc = cli(cli_binary, "capture", disk.path, "-o", out, "--format", "raw", *WHOLE)
    assert proc.returncode == 0, proc.stderr.decode()
    judge(disk.path, out, "raw")
    assert sha256(out) == sha256(disk.path)


@pytest.mark.parametrize("memory_limit", ["256M", "1M", "auto"])
def test_stdout_equals_file(cli_binary: Path, make_disk, tmp_path: Path, memory_limit: str) -> None:
    """``-o -`` gives the very bytes of ``-o FILE``, also when the spool overflows."""
    disk = make_disk(size_mib=96, random_mib=4)
    as_file = tmp_path / "file.qcow2"
    proc = cli(cli_binary, "capture", disk.path, "-o", as_file, "--report", tmp_path / "file.json", *WHOLE)
    assert proc.returncode == 0, proc.stderr.decode()
    piped = tmp_path / "piped.qcow2"
    with open(piped, "wb") as f:
        proc = cli(cli_binary, "capture", disk.path, "-o", "-", "--memory-limit", memory_limit,
                   "--report", tmp_path / "piped.json", *WHOLE, stdout=f)
    assert proc.returncode == 0, proc.stderr.decode()
    assert as_file.stat().st_size > 2 << 20, "the image must be larger than the 1M limit"
    assert sha256(piped) == sha256(as_file)
    judge(disk.path, piped)
    file_report = json.loads((tmp_path / "file.json").read_text())
    piped_report = json.loads((tmp_path / "piped.json").read_text())
    assert piped_report["sha256"] == file_report["sha256"] == sha256(piped)
    assert piped_report["target"] == "-"
    assert piped_report["passes"] == (2 if memory_limit == "1M" else 1)


def test_existing_output_needs_force(cli_binary: Path, make_disk, tmp_path: Path) -> None:
    disk = make_disk(size_mib=32, random_mib=1)
    out = tmp_path / "exists.qcow2"
    out.write_bytes(b"keep me")
    proc = cli(cli_binary, "capture", disk.path, "-o", out)
    assert proc.returncode == 4, proc.stderr.decode()
    err = proc.stderr.decode()
    assert err.startswith(f"ironic-snapshot: error: Output {out} already exists"), err
    assert "--force" in err
    assert out.read_bytes() == b"keep me"
    proc = cli(cli_binary, "capture", disk.path, "-o", out, "--force", *WHOLE)
    assert proc.returncode == 0, proc.stderr.decode()
    judge(disk.path, out)


@pytest.mark.parametrize("args, code, text", [
    (["--cluster-size", "12Q"], 2, "Invalid size \"12Q\""),
    (["--memory-limit", "lots"], 2, "Invalid size \"lots\""),
    (["--compression", "lzma"], 2, "invalid value 'lzma'"),
    (["-o", "-", "--json"], 2, "write the report with --report FILE"),
    (["-o", "x.qcow2", "--glance-image", "abc"], 2, "cannot be used with"),
])
def test_usage_errors(cli_binary: Path, tmp_path: Path, source_dir: Path, args: list[str], code: int,
                     text: str) -> None:
    source = source_dir / "src.img"
    source.write_bytes(bytes(1 << 20))
    if "-o" not in args and "--glance-image" not in args:
        args = [*args, "-o", str(tmp_path / "o.qcow2")]
    proc = cli(cli_binary, "capture", source, *args, cwd=tmp_path, stdout=subprocess.PIPE)
    assert proc.returncode == code, proc.stderr.decode()
    assert text in proc.stderr.decode(), proc.stderr.decode()
    assert not (tmp_path / "o.qcow2").exists()


def test_missing_source_is_exit_3(cli_binary: Path, tmp_path: Path) -> None:
    proc = cli(cli_binary, "capture", tmp_path / "nope.img", "-o", tmp_path / "o.qcow2")
    assert proc.returncode == 3, proc.stderr.decode()
    assert proc.stderr.decode().startswith("ironic-snapshot: error: Source"), proc.stderr.decode()


def test_help_documents_exit_codes(cli_binary: Path) -> None:
    proc = cli(cli_binary, "capture", "--help")
    assert proc.returncode == 0
    text = proc.stdout.decode()
    for line in ["0    the image was written", "2    usage error", "3    source problem", "4    output problem",
                 "5    upload problem", "6    verification failed", "130  cancelled"]:
        assert line in text, line


def test_progress_line_when_forced(cli_binary: Path, make_disk, tmp_path: Path) -> None:
    disk = make_disk(size_mib=32, random_mib=1)
    proc = cli(cli_binary, "capture", disk.path, "-o", tmp_path / "p.qcow2", "--progress")
    assert proc.returncode == 0, proc.stderr.decode()
    err = proc.stderr.decode()
    assert "\r" in err and "%" in err, err
    proc = cli(cli_binary, "capture", disk.path, "-o", tmp_path / "q.qcow2")
    assert "\r" not in proc.stderr.decode(), "no progress line when stderr is not a terminal"


def test_sigint_removes_partial_output(cli_binary: Path, tmp_path: Path, source_dir: Path) -> None:
    """Ctrl-C: exit 130 and nothing half-written left behind."""
    source = source_dir / "big.img"
    with open(source, "wb") as f:
        for _ in range(768):
            f.write(os.urandom(1 << 20))
    out = tmp_path / "big.qcow2"
    proc = subprocess.Popen([str(cli_binary), "capture", str(source), "-o", str(out), "--threads", "1",
                             "--level", "19"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not out.exists() or out.stat().st_size == 0:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "no output appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "cancelled" in err.decode().lower(), err.decode()
    assert not out.exists(), "the partial output must be removed"


def test_static_binary_in_empty_chroot(static_cli: Path, make_disk, tmp_path: Path) -> None:
    """The static binary needs nothing from the system: not even /lib or /etc."""
    ldd = subprocess.run(["ldd", str(static_cli)], capture_output=True, text=True)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr or "statically linked" in ldd.stdout
    disk = make_disk(size_mib=48, random_mib=2)
    root = tmp_path / "chroot"
    root.mkdir()
    shutil.copy2(static_cli, root / "ironic-snapshot")
    shutil.copy2(disk.path, root / "disk.img")  # on tmp_path's filesystem
    assert sorted(p.name for p in root.iterdir()) == ["disk.img", "ironic-snapshot"]
    # The image must land on another filesystem than the disk: a tmpfs.
    (root / "out").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(root / "out")], check=True)
    try:
        proc = subprocess.run(["chroot", str(root), "/ironic-snapshot", "capture", "/disk.img",
                               "-o", "/out/out.qcow2", "--json", *WHOLE], capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        judge(disk.path, root / "out" / "out.qcow2")
        assert json.loads(proc.stdout)["sha256"] == sha256(root / "out" / "out.qcow2")
    finally:
        subprocess.run(["umount", str(root / "out")], check=False)


# -- Glance ------------------------------------------------------------------------------


def test_upload_to_glance(cli_binary: Path, make_disk, glance: GlanceServer, tmp_path: Path) -> None:
    disk = make_disk(size_mib=96, random_mib=3)
    before = sha256(disk.path)
    image = glance.create_image("cli-upload")
    env = dict(os.environ, OS_IMAGE_ENDPOINT=glance.endpoint + "/v2/")
    proc = cli(cli_binary, "capture", disk.path, "--glance-image", image["id"], "--json", *WHOLE, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    record = glance.get_image(image["id"])
    assert record["status"] == "active"
    assert record["size"] == report["image_size"]
    assert record["checksum"] == report["md5"]
    assert record["os_hash_algo"] == "sha512" and record["os_hash_value"] == report["sha512"]
    assert report["target"] == f"glance:{image['id']}"
    stored = tmp_path / "stored.qcow2"
    stored.write_bytes(glance.download(image["id"]))
    assert sha256(stored) == report["sha256"]
    judge(disk.path, stored)
    assert sha256(disk.path) == before


def test_glance_image_not_queued(cli_binary: Path, source_dir: Path, glance: GlanceServer, tmp_path: Path) -> None:
    source = source_dir / "s.img"
    source.write_bytes(os.urandom(1 << 20))
    image = glance.create_image("full", disk_format="raw")
    assert glance.upload(image["id"], b"already here") == 204
    proc = cli(cli_binary, "capture", source, "--glance-image", image["id"], "--glance-endpoint", glance.endpoint)
    assert proc.returncode == 5, proc.stderr.decode()
    assert f"Glance image {image['id']} is active, not queued" in proc.stderr.decode()
    assert glance.download(image["id"]) == b"already here"


def test_glance_unknown_image(cli_binary: Path, source_dir: Path, glance: GlanceServer, tmp_path: Path) -> None:
    source = source_dir / "s.img"
    source.write_bytes(os.urandom(1 << 20))
    proc = cli(cli_binary, "capture", source, "--glance-image", "0b7f7cde-0000-4000-8000-00000000abcd",
               "--glance-endpoint", glance.endpoint)
    assert proc.returncode == 5, proc.stderr.decode()
    assert "create the image first" in proc.stderr.decode()


def test_glance_without_endpoint_is_usage_error(cli_binary: Path, source_dir: Path, tmp_path: Path) -> None:
    source = source_dir / "s.img"
    source.write_bytes(bytes(1 << 20))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    proc = cli(cli_binary, "capture", source, "--glance-image", "abc", env=env)
    assert proc.returncode == 2, proc.stderr.decode()
    assert "--glance-endpoint" in proc.stderr.decode()


def test_token_never_printed(cli_binary: Path, source_dir: Path, glance: GlanceServer, tmp_path: Path) -> None:
    source = source_dir / "s.img"
    source.write_bytes(os.urandom(1 << 20))
    token = "gAAAAAB-cli-token-" + os.urandom(8).hex()
    image = glance.create_image("tok", disk_format="raw")
    env = dict(os.environ, OS_TOKEN=token, RUST_LOG="trace")
    proc = cli(cli_binary, "capture", source, "--glance-image", image["id"], "--format", "raw",
               "--glance-endpoint", glance.endpoint, "--json", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert token.encode() not in proc.stdout + proc.stderr


def _random_disk(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


def _start_upload(cli_binary: Path, source: Path, server: GlanceServer, image_id: str) -> subprocess.Popen:
    """Starts an uncompressed capture of ``source`` into a Glance image; returns once Glance says ``saving``."""
    proc = subprocess.Popen([str(cli_binary), "capture", str(source), "--glance-image", image_id,
                             "--glance-endpoint", server.endpoint, "--compression", "none",
                             "--memory-limit", "1G"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while server.get_image(image_id)["status"] != "saving":
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.05)
    return proc


def test_glance_killed_mid_upload(cli_binary: Path, tmp_path: Path, source_dir: Path) -> None:
    """SIGKILL Glance while a 512 MiB upload runs: exit 5, a clear error, no active image."""
    source = source_dir / "random.img"
    _random_disk(source, 512)
    with start_glance(tmp_path / "glance") as server:
        image = server.create_image("killed")
        proc = _start_upload(cli_binary, source, server, image["id"])
        server.kill()
        _, err = proc.communicate(timeout=120)
        text = err.decode()
        assert proc.returncode == 5, text
        assert "ironic-snapshot: error: Glance could not be reached during upload of image" in text, text
        assert "caused by:" in text
    with start_glance(tmp_path / "glance") as again:
        assert again.get_image(image["id"])["status"] != "active"


def test_sigint_during_upload_leaves_image_queued(cli_binary: Path, glance: GlanceServer,
                                                 source_dir: Path) -> None:
    source = source_dir / "random.img"
    _random_disk(source, 384)
    image = glance.create_image("interrupted")
    proc = _start_upload(cli_binary, source, glance, image["id"])
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert glance.get_image(image["id"])["status"] == "queued"


def test_static_binary_uploads_by_host_name_from_empty_chroot(static_cli: Path, glance: GlanceServer,
                                                             tmp_path: Path) -> None:
    """No NSS, no resolv.conf: a name from /etc/hosts still reaches Glance."""
    root = tmp_path / "chroot"
    (root / "etc").mkdir(parents=True)
    shutil.copy2(static_cli, root / "ironic-snapshot")
    (root / "disk.img").write_bytes(os.urandom(2 << 20))
    (root / "etc" / "hosts").write_text("127.0.0.1 glance.test\n")
    port = glance.endpoint.rsplit(":", 1)[1]
    image = glance.create_image("by-name", disk_format="raw")
    proc = subprocess.run(["chroot", str(root), "/ironic-snapshot", "capture", "/disk.img", "--format", "raw",
                           "--glance-image", image["id"], "--glance-endpoint", f"http://glance.test:{port}",
                           "--json"], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    record = glance.get_image(image["id"])
    assert record["status"] == "active"
    assert record["checksum"] == hashlib.md5((root / "disk.img").read_bytes()).hexdigest()


# -- Outputs never destroy the source, the image or another file (issue 10) --------------


def _random_file(path: Path, mib: int) -> Path:
    path.write_bytes(os.urandom(mib << 20))
    return path


def test_report_on_source_file_is_refused(cli_binary: Path, tmp_path: Path, source_dir: Path) -> None:
    source = _random_file(source_dir / "disk.img", 4)
    before = sha256(source)
    out = tmp_path / "o.qcow2"
    for force in ([], ["--force"]):
        proc = cli(cli_binary, "capture", source, "-o", out, "--report", source, *force)
        err = proc.stderr.decode()
        assert proc.returncode == 4, err
        assert f"Output {source} is the source itself" in err, err
        assert sha256(source) == before, "the report overwrote the source"
        assert not out.exists(), "the capture ran although its report path was refused"


def test_report_on_source_block_device_is_refused(cli_binary: Path, tmp_path: Path, source_dir: Path) -> None:
    source = _random_file(source_dir / "disk.img", 8)
    out = tmp_path / "o.qcow2"
    with loop_device(source, 0, 8 << 20) as device:
        before = sha256(Path(device))
        proc = cli(cli_binary, "capture", device, "-o", out, "--report", device)
        err = proc.stderr.decode()
        assert proc.returncode == 4, err
        assert f"Output {device} is on the device being captured" in err, err
        assert sha256(Path(device)) == before, "the report was written over the device"
    assert not out.exists()


def test_report_on_the_image_path_is_refused(cli_binary: Path, tmp_path: Path, source_dir: Path) -> None:
    source = _random_file(source_dir / "disk.img", 4)
    out = tmp_path / "o.qcow2"
    proc = cli(cli_binary, "capture", source, "-o", out, "--report", out)
    assert proc.returncode == 4, proc.stderr.decode()
    assert f"--report {out} is also the image output (-o)" in proc.stderr.decode()
    assert not out.exists()
    # Through another spelling of the same path, over an existing image, with --force.
    out.write_bytes(b"old image")
    proc = cli(cli_binary, "capture", source, "-o", out, "--force", "--report", tmp_path / "." / "o.qcow2")
    assert proc.returncode == 4, proc.stderr.decode()
    assert out.read_bytes() == b"old image"


def test_existing_report_needs_force(cli_binary: Path, tmp_path: Path, source_dir: Path) -> None:
    source = _random_file(source_dir / "disk.img", 4)
    out, report = tmp_path / "o.qcow2", tmp_path / "r.json"
    report.write_text("keep me")
    proc = cli(cli_binary, "capture", source, "-o", out, "--report", report)
    assert proc.returncode == 4, proc.stderr.decode()
    assert f"Output {report} already exists" in proc.stderr.decode()
    assert report.read_text() == "keep me"
    assert not out.exists(), "the capture ran although its report path was refused"
    proc = cli(cli_binary, "capture", source, "-o", out, "--report", report, "--force", *WHOLE)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(report.read_text())["sha256"] == sha256(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.qcow2", "r.json"], "a temporary file was left"


def test_unwritable_report_fails_before_reading(cli_binary: Path, tmp_path: Path, source_dir: Path) -> None:
    """A report that cannot be written fails in well under a second: nothing read, nothing left."""
    source = _random_file(source_dir / "disk.img", 64)
    out = tmp_path / "o.qcow2"
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], check=True)
    try:
        for report in (read_only / "r.json", tmp_path / "missing-folder" / "r.json"):
            started = time.monotonic()
            # zstd level 19 on one thread: this capture would take many seconds.
            proc = cli(cli_binary, "capture", source, "-o", out, "--report", report, "--threads", "1",
                       "--level", "19")
            elapsed = time.monotonic() - started
            err = proc.stderr.decode()
            assert proc.returncode == 4, err
            assert f"Writing output {report} failed" in err, err
            assert elapsed < 2, f"took {elapsed:.1f} s: the capture ran before the report was checked"
            assert not out.exists()
    finally:
        subprocess.run(["umount", str(read_only)], check=False)


# -- Every termination removes partial output (issue 10) -----------------------------------


@pytest.fixture(scope="module")
def slow_disk() -> Iterator[str]:
    """A read-only loop device over an 8 GiB sparse file holding 1 MiB of random data
    every 64 MiB: the engine reads all of it (a block device), so a capture takes seconds."""
    folder = Path(tempfile.mkdtemp(prefix="ironic-snapshot-slow-", dir="/dev/shm"))
    try:
        path = folder / "slow.img"
        with open(path, "wb") as f:
            f.truncate(8 << 30)
            for at in range(0, 8 << 30, 64 << 20):
                f.seek(at)
                f.write(os.urandom(1 << 20))
        with loop_device(path, 0, 8 << 30, read_only=True) as device:
            yield device
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for(paths: Callable[[], list[Path]], proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while not paths():
        assert proc.poll() is None, f"the capture ended before {what} appeared"
        assert time.monotonic() < deadline, f"no {what} appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("signals", [("SIGHUP",), ("SIGINT",), ("SIGINT", "SIGINT"), ("SIGTERM",),
                                     ("SIGTERM", "SIGTERM"), ("SIGHUP", "SIGTERM")])
def test_signals_remove_partial_output(cli_binary: Path, tmp_path: Path, slow_disk: str, fmt: str,
                                       signals: tuple[str, ...]) -> None:
    """HUP, INT or TERM, once or twice: exit 128 + the first signal, no image, no report, no temporary file."""
    folder = tmp_path / "out"
    folder.mkdir()
    out, report = folder / f"disk.{fmt}", folder / "report.json"
    proc = subprocess.Popen([str(cli_binary), "capture", slow_disk, "-o", str(out), "--format", fmt,
                             "--report", str(report), "--threads", "1", "--level", "19"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: [out] if out.exists() and out.stat().st_blocks > 0 else [], proc, "image data")
        for name in signals:
            proc.send_signal(getattr(signal, name))
            time.sleep(0.01)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + getattr(signal, signals[0]), err.decode()
    assert "Capture cancelled" in err.decode(), err.decode()
    assert list(folder.iterdir()) == [], "partial output survived"


def test_second_signal_stops_a_stuck_capture(cli_binary: Path, tmp_path: Path, slow_disk: str) -> None:
    """-o - into a pipe nobody reads: the first Ctrl-C cannot be noticed, the second
    stops at once and still removes the pending report."""
    folder = tmp_path / "out"
    folder.mkdir()
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen([str(cli_binary), "capture", slow_disk, "-o", "-", "--format", "raw",
                                 "--report", str(folder / "report.json")],
                                stdout=write_end, stderr=subprocess.PIPE)
        os.close(write_end)
        try:
            _wait_for(lambda: list(folder.iterdir()), proc, "the pending report")
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            assert proc.poll() is None, "the stuck capture ended on the first signal"
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        os.close(read_end)
    assert proc.returncode == 130, err.decode()
    assert "SIGINT twice" in err.decode(), err.decode()
    assert list(folder.iterdir()) == [], "the pending report survived"


# -- Outputs beside the source, and what really is the source (issue 10) -------------------


def test_image_beside_its_source(cli_binary: Path, source_dir: Path) -> None:
    """capture disk.img -o disk.qcow2 in one folder, as with qemu-img convert."""
    source = _random_file(source_dir / "disk.img", 8)
    before = sha256(source)
    proc = cli(cli_binary, "capture", source, "-o", source_dir / "disk.qcow2", *WHOLE)
    assert proc.returncode == 0, proc.stderr.decode()
    judge(source, source_dir / "disk.qcow2")
    assert sha256(source) == before


def test_hard_link_to_the_source_is_refused(cli_binary: Path, source_dir: Path) -> None:
    source = _random_file(source_dir / "disk.img", 4)
    before = sha256(source)
    link = source_dir / "link.img"
    link.hardlink_to(source)
    symlink = source_dir / "symlink.img"
    symlink.symlink_to(source)
    for output in (link, symlink):
        proc = cli(cli_binary, "capture", source, "-o", output, "--force", "--format", "raw")
        assert proc.returncode == 4, proc.stderr.decode()
        assert f"Output {output} is the source itself ({source})" in proc.stderr.decode()
    assert sha256(source) == before


def test_output_on_a_filesystem_of_the_captured_device_is_refused(cli_binary: Path, tmp_path: Path,
                                                                  source_dir: Path) -> None:
    source = source_dir / "fs.img"
    with open(source, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(source)], check=True)
    with loop_device(source, 0, 64 << 20) as device, mounted(device, tmp_path / "mnt") as mnt:
        before = sha256(source)
        proc = cli(cli_binary, "capture", device, "-o", mnt / "image.qcow2")
        assert proc.returncode == 4, proc.stderr.decode()
        assert f"Output {mnt / 'image.qcow2'} is on the device being captured ({device})" in proc.stderr.decode()
        assert not (mnt / "image.qcow2").exists()
        assert sha256(source) == before


def test_loop_backing_file_as_output_is_refused(cli_binary: Path, tmp_path: Path, source_dir: Path) -> None:
    source = _random_file(source_dir / "backing.img", 8)
    before = sha256(source)
    with loop_device(source, 0, 8 << 20) as device:
        proc = cli(cli_binary, "capture", device, "-o", source, "--force", "--format", "raw")
        err = proc.stderr.decode()
        assert proc.returncode == 4, err
        assert f"Output {source} is the backing file of the loop device being captured ({device})" in err, err
        # Another file in the backing file's folder is fine.
        proc = cli(cli_binary, "capture", device, "-o", source_dir / "copy.raw", "--format", "raw")
        assert proc.returncode == 0, proc.stderr.decode()
    assert sha256(source) == before == sha256(source_dir / "copy.raw")
