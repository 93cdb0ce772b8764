"""The wheel that goes into the ramdisk, and the gate .ci/wheel.sh puts on it.

The wheel is built as .ci/wheel.sh builds it (maturin, zig, manylinux_2_28).
``.ci/wheel.sh --check`` must accept it (tags, auditwheel, import from fresh
Python 3.11 and 3.12 virtualenvs) and refuse wheels whose tags would not
install in a CentOS Stream 9 ramdisk.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WHEEL_SH = REPO / ".ci" / "wheel.sh"
VENV = Path(sys.executable).parent.parent


def check(wheel: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(WHEEL_SH), "--check", str(wheel)],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home()), "VENV": str(VENV)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def renamed(wheel: Path, tmp_path: Path, old: str, new: str) -> Path:
    assert old in wheel.name
    copy = tmp_path / wheel.name.replace(old, new)
    shutil.copy(wheel, copy)
    return copy


def test_wheel_sh_accepts_the_built_wheel(wheel: Path) -> None:
    r = check(wheel)
    assert r.returncode == 0, r.stderr[-4000:]
    assert 'platform tag: "manylinux_2_28_x86_64"' in r.stderr or "manylinux_2_28_x86_64" in r.stderr
    assert "imported from" in r.stdout
    # Python 3.12 is what the ramdisk runs; pyenv has it on these machines.
    assert "python3.12 virtualenv" in r.stderr, "python3.12 was not found: the ramdisk's Python went untested"


def test_wheel_is_abi3_manylinux_2_28_with_the_agent_entry_point(wheel: Path) -> None:
    name, version, py, abi, plat = wheel.name[: -len(".whl")].split("-")
    assert (name, py, abi) == ("ironic_snapshot", "cp311", "abi3")
    assert plat.startswith("manylinux_2_28_") or plat.startswith("manylinux_2_17_"), plat
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "ironic_snapshot/_engine.abi3.so" in names
        assert "ironic_snapshot/hardware_manager.py" in names
        (ep_file,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        eps = configparser.ConfigParser()
        eps.read_string(z.read(ep_file).decode())
        metadata = z.read(ep_file.replace("entry_points.txt", "METADATA")).decode()
    assert eps["ironic_python_agent.hardware_managers"]["snapshot"] == (
        "ironic_snapshot.hardware_manager:SnapshotHardwareManager"
    )
    assert "Requires-Python: >=3.11" in metadata


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("manylinux_2_28", "manylinux_2_34", "is not manylinux_2_28 or older"),
        ("manylinux_2_28_x86_64", "linux_x86_64", "is not manylinux_2_28 or older"),
        ("-abi3-", "-cp311-", "is not abi3"),
        ("-cp311-", "-cp312-", "expected cp311"),
        # Claims an older glibc than its symbols need: auditwheel catches it.
        ("manylinux_2_28", "manylinux_2_17", "claims manylinux_2_17_x86_64 but its symbols need manylinux_2_28"),
    ],
)
def test_wheel_sh_refuses_tags_the_ramdisk_cannot_install(
    wheel: Path, tmp_path: Path, old: str, new: str, message: str
) -> None:
    r = check(renamed(wheel, tmp_path, old, new))
    assert r.returncode == 1
    assert message in r.stderr, r.stderr[-2000:]


def test_wheel_sh_refuses_a_wheel_without_the_abi3_extension(wheel: Path, tmp_path: Path) -> None:
    # Same tags, but the extension is a version-specific build.
    bad = tmp_path / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "ironic_snapshot/_engine.abi3.so":
                item.filename = "ironic_snapshot/_engine.cpython-311-x86_64-linux-gnu.so"
            elif item.filename.endswith(".dist-info/RECORD"):
                data = data.replace(b"_engine.abi3.so", b"_engine.cpython-311-x86_64-linux-gnu.so")
            dst.writestr(item, data)
    r = check(bad)
    assert r.returncode == 1
    assert "has no ironic_snapshot/_engine.abi3.so" in r.stderr


def test_wheel_sh_usage_errors() -> None:
    r = check(Path("/nonexistent.whl"))
    assert r.returncode == 1 and "Usage" in r.stderr
