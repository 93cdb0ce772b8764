"""shellcheck over every shell script this project ships for DevStack and CI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from . import harness

REPO = harness.REPO


def scripts() -> list[Path]:
    found = [
        REPO / "devstack" / "plugin.sh",
        REPO / "devstack" / "settings",
        REPO / ".ci" / "wheel.sh",
    ]
    element_hooks = sorted(p for p in (REPO / "devstack" / "elements").glob("*/*.d/*") if p.is_file())
    assert element_hooks, "no element hook scripts found"
    return found + element_hooks


def shellcheck(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("shellcheck")
    # Listed in tests/apt-packages.txt: missing means setup did not run.
    assert exe, "shellcheck is not installed: run tests/setup.sh (Debian package shellcheck)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_shell_scripts_are_shellcheck_clean() -> None:
    files = scripts()
    r = shellcheck("-s", "bash", "-x", *map(str, files))
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_devstack_stand_in_driver_is_shellcheck_clean(tmp_path: Path) -> None:
    # The tests' own bash must not hide mistakes either.
    driver = tmp_path / "driver.sh"
    driver.write_text("#!/bin/bash\n" + harness._DRIVER)
    r = shellcheck("-s", "bash", "-e", "SC1090", str(driver))
    assert r.returncode == 0, r.stdout + r.stderr


def test_shellcheck_does_catch_mistakes(tmp_path: Path) -> None:
    # Guard against a shellcheck that passes everything (wrong binary, config).
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/bin/bash\nrm -rf $1/*\n[ $x == y ]\n')
    r = shellcheck("-s", "bash", str(bad))
    assert r.returncode != 0 and "SC2086" in r.stdout


def test_shell_scripts_follow_openstack_bash_style() -> None:
    # bashate is OpenStack's style checker for DevStack plugins; E006 (line
    # length) is ignored as DevStack itself does.
    bashate = harness.VENV_BIN / "bashate"
    assert bashate.exists(), "bashate is missing from the test virtualenv: install tests/requirements.txt"
    r = subprocess.run(
        [str(bashate), "--ignore", "E006", "--error", "E", *map(str, scripts())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning" not in r.stdout + r.stderr, r.stdout + r.stderr
