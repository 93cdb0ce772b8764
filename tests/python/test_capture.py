"""ironic_snapshot.capture: results judged by qemu-img, errors, progress, logging."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ironic_snapshot
from ironic_snapshot import exceptions


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=300)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("compression", ["zstd", "zlib", "none"])
def test_capture_to_qcow2_file(disk_image: Path, tmp_path: Path, compression: str) -> None:
    before = sha256(disk_image)
    out = tmp_path / "out.qcow2"
    report = ironic_snapshot.capture(disk_image, out, compression=compression)
    assert qemu_img("check", "-q", str(out)).returncode == 0
    compare = qemu_img("compare", "-f", "raw", "-F", "qcow2", str(disk_image), str(out))
    assert compare.returncode == 0, compare.stdout + compare.stderr
    data = out.read_bytes()
    assert report["sha256"] == hashlib.sha256(data).hexdigest()
    assert report["sha512"] == hashlib.sha512(data).hexdigest()
    assert report["md5"] == hashlib.md5(data).hexdigest()
    assert report["image_size"] == len(data)
    assert report["virtual_size"] == disk_image.stat().st_size
    assert report["format"] == "qcow2"
    assert report["compression"] == compression
    assert report["tool_version"] == ironic_snapshot.__version__
    assert sha256(disk_image) == before


def test_capture_raw(disk_image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.raw"
    report = ironic_snapshot.capture(str(disk_image), str(out), format="raw")
    assert report["format"] == "raw"
    assert sha256(out) == sha256(disk_image)


def test_memory_limit_auto(disk_image: Path, tmp_path: Path) -> None:
    """``memory_limit="auto"`` is taken (half of the available memory)."""
    out = tmp_path / "out.qcow2"
    report = ironic_snapshot.capture(disk_image, out, memory_limit="auto")
    assert report["sha256"] == sha256(out)
    assert qemu_img("check", "-q", str(out)).returncode == 0


def test_existing_output_needs_force(disk_image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.qcow2"
    out.write_bytes(b"keep me")
    with pytest.raises(exceptions.InvalidInputError):
        ironic_snapshot.capture(disk_image, out)
    assert out.read_bytes() == b"keep me"
    ironic_snapshot.capture(disk_image, out, force=True)
    assert qemu_img("check", "-q", str(out)).returncode == 0


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({}, "No destination"),
    ({"output": "x", "glance_image": "y"}, "Both output and glance_image"),
    ({"glance_image": "y"}, "No Glance endpoint"),
    ({"output": "x", "format": "vmdk"}, 'Invalid format "vmdk"'),
    ({"output": "x", "compression": "lz4"}, 'Invalid compression "lz4"'),
    ({"output": "x", "cluster_size": "12Q"}, "Invalid cluster_size"),
    ({"output": "x", "memory_limit": "lots"}, "Invalid memory_limit"),
    ({"output": "x", "progress_interval": -1.0}, "Invalid progress_interval"),
])
def test_invalid_arguments(disk_image: Path, tmp_path: Path, kwargs: dict, needle: str) -> None:
    if "output" in kwargs:
        kwargs = dict(kwargs, output=tmp_path / kwargs["output"])
    with pytest.raises(exceptions.InvalidInputError, match=needle) as info:
        ironic_snapshot.capture(disk_image, **kwargs)
    assert isinstance(info.value, ValueError)
    assert info.value.kind == "invalid_input"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kwargs", [
    {"format": "vmdk"},
    {"compression": "lz4"},
    {"level": 99},
    {"compression": "zlib", "level": 0},
    {"cluster_size": "3000"},
    {"cluster_size": "4M"},
    {"cluster_size": "12Q"},
    {"memory_limit": "lots"},
    {"threads": 5000},
])
def test_check_options_refuses_what_capture_refuses(disk_image: Path, tmp_path: Path,
                                                     kwargs: dict) -> None:
    """check_options and capture apply one set of rules, with the same message."""
    with pytest.raises(exceptions.InvalidInputError) as checked:
        ironic_snapshot.check_options(**kwargs)
    with pytest.raises(exceptions.InvalidInputError) as captured:
        ironic_snapshot.capture(disk_image, tmp_path / "x", **kwargs)
    assert str(checked.value) == str(captured.value)
    assert checked.value.kind == "invalid_input"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"threads": -1}, "Invalid threads -1"),
    ({"threads": True}, "Invalid threads True"),
    ({"cluster_size": 64.5}, "Invalid cluster_size 64.5"),
    ({"memory_limit": ["1G"]}, "Invalid memory_limit"),
    ({"level": "high"}, "Invalid level 'high'"),
])
def test_check_options_wrong_types_are_invalid_input(kwargs: dict, needle: str) -> None:
    # A wrong type from a step argument or an API caller is a typed error too.
    with pytest.raises(exceptions.InvalidInputError, match=needle):
        ironic_snapshot.check_options(**kwargs)


def test_check_options_accepts_good_values() -> None:
    for kwargs in ({}, {"format": "raw", "compression": "none"},
                   {"compression": "zlib", "level": 9, "cluster_size": "2M", "threads": 0,
                    "memory_limit": "auto"},
                   {"cluster_size": 65536, "memory_limit": 1 << 30, "threads": 1024},
                   {"format": None, "compression": None, "memory_limit": None}):
        assert ironic_snapshot.check_options(**kwargs) is None, kwargs


def test_missing_source_is_source_error(tmp_path: Path) -> None:
    with pytest.raises(exceptions.SourceError) as info:
        ironic_snapshot.capture(tmp_path / "nope.img", tmp_path / "out.qcow2")
    assert isinstance(info.value, OSError)
    assert info.value.kind == "source"
    assert "nope.img" in str(info.value)


def test_progress_callback(disk_image: Path, tmp_path: Path) -> None:
    updates: list[dict] = []
    ironic_snapshot.capture(disk_image, tmp_path / "out.qcow2", progress=updates.append,
                            progress_interval=0.0)
    assert updates, "the callback was never called"
    assert set(updates[0]) == {"phase", "done", "total", "written"}
    writing = [u for u in updates if u["phase"] == "writing"]
    assert writing and writing[-1]["done"] == writing[-1]["total"] == disk_image.stat().st_size


def test_progress_exception_cancels_and_is_raised(disk_image: Path, tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def progress(update: dict) -> None:
        raise Stop("stop here")

    out = tmp_path / "out.qcow2"
    with pytest.raises(Stop, match="stop here"):
        ironic_snapshot.capture(disk_image, out, progress=progress, progress_interval=0.0)


def test_gil_released_during_capture(disk_image: Path, tmp_path: Path) -> None:
    # Another Python thread keeps running while the engine works, as the
    # agent's heartbeat thread must.
    ticks = 0
    done = threading.Event()

    def run() -> None:
        try:
            ironic_snapshot.capture(disk_image, tmp_path / "out.qcow2", compression="zstd",
                                    level=19, threads=1)
        finally:
            done.set()

    worker = threading.Thread(target=run)
    started = time.monotonic()
    worker.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    worker.join()
    elapsed = time.monotonic() - started
    # Rust code holding the GIL never yields it, so a held GIL would leave
    # this loop a tick or two; a free one gives about one tick per
    # millisecond (far fewer on a loaded machine, hence the low bar).
    assert elapsed > 0.2, f"the capture was too short to tell ({elapsed:.3f} s)"
    assert ticks >= 20, (ticks, elapsed)


def test_engine_logs_reach_python_logging(disk_image: Path, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="ironic_snapshot.engine"):
        ironic_snapshot.capture(disk_image, tmp_path / "out.qcow2")
    records = [r for r in caplog.records if r.name == "ironic_snapshot.engine"]
    assert records, "no engine log record reached Python logging"


def test_output_checks_are_the_engines(disk_image: Path) -> None:
    """The Python API gets the CLI's protections (one core): beside the source
    works, the source itself (also through a hard link) is refused."""
    before = sha256(disk_image)
    beside = disk_image.parent / "disk.qcow2"
    ironic_snapshot.capture(disk_image, beside)
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", str(disk_image), str(beside)).returncode == 0
    link = disk_image.parent / "link.img"
    link.hardlink_to(disk_image)
    for output in (disk_image, link):
        with pytest.raises(exceptions.InvalidInputError, match="is the source itself"):
            ironic_snapshot.capture(disk_image, output, force=True)
    assert sha256(disk_image) == before


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_engine_panic_leaves_no_partial_output(disk_image: Path, tmp_path: Path, fmt: str) -> None:
    """A panic inside the engine becomes InternalError and removes the partial file.

    No real input makes the engine panic, so the binding's test hook
    (IRONIC_SNAPSHOT_TEST_PANIC=1, read once per process: hence a child
    interpreter) panics in the engine's thread once image bytes were written.
    """
    out = tmp_path / f"panicked.{fmt}"
    code = (
        "import sys, ironic_snapshot\n"
        "from ironic_snapshot import exceptions\n"
        "try:\n"
        f"    ironic_snapshot.capture({str(disk_image)!r}, {str(out)!r}, format={fmt!r})\n"
        "except exceptions.InternalError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(0)\n"
        "sys.exit('no panic')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, IRONIC_SNAPSHOT_TEST_PANIC="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the engine panicked: IRONIC_SNAPSHOT_TEST_PANIC is set" in proc.stdout, proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == [], "a partial image survived the panic"
