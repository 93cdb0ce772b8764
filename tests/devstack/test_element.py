"""The diskimage-builder element ``ironic-snapshot``, its hooks run for real.

A ramdisk cannot be built here (DIB needs a distribution mirror and a
chroot), so the hooks run on this machine the way DIB runs them:
extra-data.d with ``TMP_HOOKS_PATH``, then install.d with the agent's Python,
here a fresh virtualenv standing for ``/opt/ironic-python-agent`` that holds
the real ironic_python_agent package. The wheel is the real abi3 manylinux
wheel of this checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import ironic_python_agent
import pytest

from .harness import ELEMENTS
from .wheel_build import base_python, built_wheel

ELEMENT = ELEMENTS / "ironic-snapshot"
EXTRA_DATA = ELEMENT / "extra-data.d" / "50-ironic-snapshot-wheel"
INSTALL = ELEMENT / "install.d" / "75-ironic-snapshot-install"


def run(script: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    return subprocess.run([str(script)], env={**base, **env}, cwd=cwd, capture_output=True, text=True, timeout=600)


def run_install(python: Path, hooks: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs the install.d hook for ``python`` with the files extra-data.d put in ``hooks``."""
    return run(INSTALL, {"DIB_IRONIC_SNAPSHOT_PYTHON": str(python), "IRONIC_SNAPSHOT_IN_TARGET_DIR": str(hooks),
                         **env}, cwd)


def stage_wheel(wheel: Path, hooks: Path) -> Path:
    """Puts ``wheel`` where extra-data.d copies it (``hooks/ironic-snapshot``); returns ``hooks``."""
    (hooks / "ironic-snapshot").mkdir(parents=True)
    (hooks / "ironic-snapshot" / wheel.name).write_bytes(wheel.read_bytes())
    return hooks


def make_venv(path: Path, with_agent: bool) -> Path:
    subprocess.run([base_python(), "-m", "venv", str(path)], check=True, timeout=300)
    if with_agent:
        (site,) = (path / "lib").glob("python3*/site-packages")
        (site / "ironic_python_agent").symlink_to(Path(ironic_python_agent.__file__).parent)
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def wheel() -> Path:
    return built_wheel()


def test_element_files_are_executable_and_declare_their_dependency() -> None:
    assert (ELEMENT / "element-deps").read_text().split() == ["ironic-python-agent-ramdisk"]
    for script in (EXTRA_DATA, INSTALL):
        assert os.access(script, os.X_OK), f"{script} must be executable for dib-run-parts"
    # install.d runs after the agent's own 60-ironic-python-agent-ramdisk-install.
    assert INSTALL.name > "60-ironic-python-agent-ramdisk-install"


def test_hooks_install_the_wheel_into_the_agent_python(wheel: Path, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    r = run(EXTRA_DATA, {"DIB_IRONIC_SNAPSHOT_WHEEL": str(wheel), "TMP_HOOKS_PATH": str(hooks)}, tmp_path)
    assert r.returncode == 0, r.stderr
    copied = hooks / "ironic-snapshot" / wheel.name
    assert copied.read_bytes() == wheel.read_bytes()

    python = make_venv(tmp_path / "agent", with_agent=True)
    conf = tmp_path / "etc-ipa"
    r = run_install(python, hooks, tmp_path,
                    DIB_IRONIC_SNAPSHOT_GLANCE_ENDPOINT="https://glance.example.org:9292",
                    IRONIC_SNAPSHOT_AGENT_CONF_DIR=str(conf))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "installed for the agent" in r.stdout

    # The agent's Python now loads the engine from the wheel and sees the
    # hardware manager entry point, independently of the hook's own check.
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import json, ironic_snapshot._engine as e; from importlib.metadata import entry_points as ep;"
            "print(json.dumps([e.__file__, e.VERSION, "
            "[x.value for x in ep(group='ironic_python_agent.hardware_managers') if x.name == 'snapshot']]))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    so, version, managers = json.loads(probe.stdout)
    assert so.startswith(str(tmp_path / "agent")) and so.endswith("_engine.abi3.so")
    assert version
    assert managers == ["ironic_snapshot.hardware_manager:SnapshotHardwareManager"]
    assert (conf / "ironic-snapshot.conf").read_text() == "[snapshot]\nglance_endpoint = https://glance.example.org:9292\n"


def test_no_glance_endpoint_writes_no_agent_config(wheel: Path, tmp_path: Path) -> None:
    hooks = stage_wheel(wheel, tmp_path / "hooks")
    python = make_venv(tmp_path / "agent", with_agent=True)
    conf = tmp_path / "etc-ipa"
    r = run_install(python, hooks, tmp_path, IRONIC_SNAPSHOT_AGENT_CONF_DIR=str(conf))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not conf.exists()


def test_extra_data_needs_the_wheel_variable(tmp_path: Path) -> None:
    r = run(EXTRA_DATA, {"TMP_HOOKS_PATH": str(tmp_path)}, tmp_path)
    assert r.returncode == 1
    assert "DIB_IRONIC_SNAPSHOT_WHEEL is not set" in r.stderr
    assert not (tmp_path / "ironic-snapshot").exists()


def test_extra_data_refuses_what_is_not_a_wheel(tmp_path: Path) -> None:
    tarball = tmp_path / "ironic-snapshot-0.1.0.tar.gz"
    tarball.write_bytes(b"sdist")
    r = run(EXTRA_DATA, {"TMP_HOOKS_PATH": str(tmp_path), "DIB_IRONIC_SNAPSHOT_WHEEL": str(tarball)}, tmp_path)
    assert r.returncode == 1
    assert "is not a wheel file" in r.stderr


def test_install_refuses_a_python_without_the_agent(wheel: Path, tmp_path: Path) -> None:
    hooks = stage_wheel(wheel, tmp_path / "hooks")
    python = make_venv(tmp_path / "plain", with_agent=False)
    r = run_install(python, hooks, tmp_path)
    assert r.returncode == 1
    assert "has no ironic_python_agent" in r.stderr
    listing = subprocess.run([str(python), "-m", "pip", "list"], capture_output=True, text=True, check=True)
    assert "ironic-snapshot" not in listing.stdout


def test_install_without_the_extra_data_hook_says_so(tmp_path: Path) -> None:
    python = make_venv(tmp_path / "agent", with_agent=True)
    r = run_install(python, tmp_path / "empty", tmp_path)
    assert r.returncode == 1
    assert "found 0" in r.stderr and "extra-data.d" in r.stderr
