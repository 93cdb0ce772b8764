"""Fixtures shared by every test suite; generic things only.

- ``repo_root``: the checkout.
- ``cli_binary``: the release ``ironic-snapshot`` CLI built from this checkout.
- ``static_cli``: the fully static CLI built by ``rust/snapshot-cli/build-static.sh``.
- ``make_disk``: builds a GPT disk image with two ext4 partitions filled with
  real files through loop-device mounts (root only).
- ``glance``: a real Glance API on loopback for the test module
  (``tests/stack/glance.py``).

Suites add their own fixtures in their own ``conftest.py``.

On CI (``CI=true``) a skipped test fails the run: a setup that lost a
package or root would otherwise turn whole real-stack suites into green
skips. Set ``IRONIC_SNAPSHOT_ALLOW_SKIPS=1`` to run a partial suite on CI on
purpose.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.blockdev import loop_device, mounted, run
from tests.stack.glance import GlanceServer, start_glance

REPO = Path(__file__).resolve().parents[1]


def _skips_fail_the_run() -> bool:
    """Whether this run treats a skipped test as a failure (CI, unless allowed)."""
    return (os.environ.get("CI", "").lower() in {"1", "true", "yes"}
            and not os.environ.get("IRONIC_SNAPSHOT_ALLOW_SKIPS"))


_SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skipped test (collected, set-up or called)."""
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """On CI, turn a run with skipped tests into a failed run that names them."""
    if _SKIPPED and _skips_fail_the_run() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:  # noqa: ANN001
    """Say why a CI run with skips failed."""
    if _SKIPPED and _skips_fail_the_run():
        terminalreporter.section("skipped tests fail the run on CI")
        for nodeid in _SKIPPED:
            terminalreporter.line(f"SKIPPED ON CI: {nodeid}")
        terminalreporter.line(f"{len(_SKIPPED)} skipped: CI must run every test "
                              "(set IRONIC_SNAPSHOT_ALLOW_SKIPS=1 to allow)")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout this test run belongs to."""
    return REPO


@pytest.fixture(scope="session")
def cli_binary() -> Path:
    """The release ``ironic-snapshot`` binary, built once per session.

    ``IRONIC_SNAPSHOT_CLI`` points at a prebuilt binary instead.
    """
    if os.environ.get("IRONIC_SNAPSHOT_CLI"):
        return Path(os.environ["IRONIC_SNAPSHOT_CLI"])
    subprocess.run(["cargo", "build", "--locked", "-q", "--release", "-p", "snapshot-cli"],
                   cwd=REPO, check=True)
    binary = REPO / "target" / "release" / "ironic-snapshot"
    assert binary.is_file(), f"cargo built no {binary}"
    return binary


@pytest.fixture(scope="session")
def static_cli() -> Path:
    """The fully static binary from ``rust/snapshot-cli/build-static.sh``."""
    out = subprocess.run(["bash", str(REPO / "rust" / "snapshot-cli" / "build-static.sh"), "-q"],
                         cwd=REPO, check=True, capture_output=True, text=True)
    binary = REPO / out.stdout.strip().splitlines()[-1]
    assert binary.is_file(), f"build-static.sh built no {binary}"
    return binary


@dataclasses.dataclass
class BuiltDisk:
    """A built disk image and what was written into it."""

    path: Path
    #: ``(start, size)`` in bytes of each partition.
    partitions: list[tuple[int, int]]
    #: relative path -> content written into each partition's filesystem.
    files: list[dict[str, bytes]]


def _fill(root: Path, seed: int, random_bytes: int) -> dict[str, bytes]:
    """Writes text, compressible and random files under ``root``."""
    files = {
        "etc/hostname": f"node-{seed}\n".encode(),
        "var/log/syslog": b"".join(f"Nov 24 kernel: event {i} seed {seed} ok\n".encode()
                                   for i in range(20000)),
        "data/series.csv": "\n".join(str(i * seed) for i in range(100000)).encode(),
        "data/random.bin": os.urandom(random_bytes),
        "data/zeros.bin": bytes(1 << 20),
    }
    for rel, content in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    os.symlink("hostname", root / "etc" / "hostname.link")
    return files


@pytest.fixture
def source_dir() -> Iterator[Path]:
    """A folder for source disk images on another filesystem than ``tmp_path``.

    Sources live in tmpfs (``/dev/shm``) and outputs in ``tmp_path``, so an
    output folder holds only what a capture wrote (an image beside its source
    is allowed: see ``test_image_beside_its_source``).
    """
    path = Path(tempfile.mkdtemp(prefix="ironic-snapshot-src-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_disk(tmp_path: Path, source_dir: Path) -> Callable[..., BuiltDisk]:
    """Builder of GPT disk images: ``make_disk(size_mib=128, random_mib=4, name="disk.img")``.

    Two partitions (GPT via sfdisk), each ``mkfs.ext4`` on its own loop device
    and filled through a real mount with text, compressible and random files;
    then everything is unmounted and detached. The image lives in
    ``source_dir`` (tmpfs), away from ``tmp_path`` where outputs go. Needs root.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root: builds filesystems on loop devices and mounts them")

    def build(size_mib: int = 128, random_mib: int = 4, name: str = "disk.img") -> BuiltDisk:
        path = source_dir / name
        with open(path, "wb") as f:
            f.truncate(size_mib << 20)
        half = (size_mib - 2) // 2
        layout = (f"label: gpt\n"
                  f"start=1MiB, size={half}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=one\n"
                  f"start={1 + half}MiB, size={half}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=two\n")
        run("sfdisk", "--quiet", path, input=layout.encode())
        table = json.loads(run("sfdisk", "-J", path).stdout)["partitiontable"]
        sector = table.get("sectorsize", 512)
        partitions = [(p["start"] * sector, p["size"] * sector) for p in table["partitions"]]
        files = []
        for index, (start, size) in enumerate(partitions):
            with loop_device(path, start, size) as device:
                run("mkfs.ext4", "-q", "-F", "-L", f"part{index}", device)
                with mounted(device, tmp_path / f"mnt{index}") as root:
                    files.append(_fill(root, index + 1, random_mib << 20))
        return BuiltDisk(path, partitions, files)

    return build


@pytest.fixture(scope="module")
def glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceServer]:
    """A real Glance (gunicorn, sqlite, file store, no auth) for the test module."""
    if shutil.which("gunicorn", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("gunicorn is not in the test virtualenv: run tests/setup.sh")
    with start_glance(tmp_path_factory.mktemp("glance")) as server:
        yield server
