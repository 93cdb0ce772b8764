"""The plugin's and the element's READMEs are valid reStructuredText."""

from __future__ import annotations

from pathlib import Path

import docutils.core
import pytest

from .harness import REPO

READMES = [REPO / "devstack" / "README.rst", REPO / "devstack" / "elements" / "ironic-snapshot" / "README.rst"]


@pytest.mark.parametrize("path", READMES, ids=lambda p: str(p.relative_to(REPO)))
def test_readme_renders_without_warnings(path: Path) -> None:
    # halt_level 2 turns every docutils warning (a broken table, a bad
    # reference) into an exception.
    docutils.core.publish_string(
        path.read_text(), source_path=str(path), writer="null", settings_overrides={"halt_level": 2}
    )
