"""Release notes: reno lint, reno report and the Sphinx build see every note.

reno reads notes from git history, so these need a git checkout; from a
tarball they are skipped, saying so.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NOTES = REPO / "releasenotes" / "notes"
SECTIONS = {s for s, _ in yaml.safe_load((REPO / "releasenotes" / "config.yaml").read_text())["sections"]}


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


pytestmark = pytest.mark.skipif(
    git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true",
    reason="reno reads release notes from git history and this is not a git checkout",
)


def committed_notes() -> list[str]:
    out = git("ls-files", "releasenotes/notes").stdout.split()
    return sorted(Path(p).name for p in out if p.endswith(".yaml"))


def test_reno_lint() -> None:
    r = subprocess.run([str(BIN / "reno"), "lint"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_note_files_are_named_and_shaped_as_reno_makes_them() -> None:
    notes = sorted(NOTES.glob("*"))
    assert notes, "no release notes"
    for note in notes:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*-[0-9a-f]{16}\.yaml", note.name), (
            f"{note.name}: name notes <slug>-<16 hex>.yaml (reno new <slug>)"
        )
        body = yaml.safe_load(note.read_text())
        assert isinstance(body, dict) and body, f"{note.name} is empty"
        assert set(body) <= SECTIONS | {"prelude"}, f"{note.name}: unknown sections {set(body) - SECTIONS}"
        for section, items in body.items():
            if section == "prelude":
                assert isinstance(items, str)
                continue
            assert isinstance(items, list) and all(isinstance(i, str) and i.strip() for i in items), (
                f"{note.name}: section {section} must be a list of non-empty strings"
            )


def test_reno_report_includes_every_committed_note() -> None:
    r = subprocess.run([str(BIN / "reno"), "report"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    reported = set(re.findall(r"releasenotes/notes/([^ ]+\.yaml) @", r.stdout))
    missing = set(committed_notes()) - reported
    assert not missing, f"reno report left out {sorted(missing)}"
    assert "New Features" in r.stdout


def test_release_notes_build_with_sphinx(tmp_path: Path) -> None:
    out = tmp_path / "html"
    r = subprocess.run(
        [str(BIN / "sphinx-build"), "-W", "-q", "-b", "html", str(REPO / "releasenotes" / "source"), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    html = (out / "index.html").read_text()
    assert "ironic-snapshot Release Notes" in html
    # One item per committed note, at least (a note may hold several).
    items = len(re.findall(r"<li><p>", html))
    assert items >= len(committed_notes()), (items, committed_notes())
