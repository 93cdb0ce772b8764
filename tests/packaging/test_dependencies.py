"""pyproject's dependencies and extras name exactly what the package imports.

Every third-party module imported anywhere under python/ironic_snapshot is
mapped to its distribution through the installed metadata
(``importlib.metadata.packages_distributions``); modules of the client
package may rely on the ``client`` extra, those of the Nova driver on the
``nova`` extra, everything else on ``dependencies``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "python" / "ironic_snapshot"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

#: Sub-packages whose imports an extra provides.
EXTRA_OF = {"client": "client", "nova": "nova", "tempest_plugin": "tempest"}
#: Modules of the Nova driver that the test venv lacks (Nova lives in the
#: separate .venv-nova of tests/stack/nova.py), with their distribution.
NOT_IN_TEST_VENV = {"nova": "nova"}


def requirement_name(spec: str) -> str:
    """Normalised distribution name of a requirement string."""
    name = re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def top_level_imports(path: Path) -> set[str]:
    """Top-level modules a file imports, at any depth (also under TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def third_party(modules: set[str]) -> set[str]:
    return {m for m in modules
            if m not in sys.stdlib_module_names and m not in {"ironic_snapshot", "__future__"}}


def needed_by_part() -> dict[str, set[str]]:
    """Distributions imported by each part: '' (core and agent) or an extra's name."""
    dists = importlib.metadata.packages_distributions()
    needed: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        sub = path.relative_to(PACKAGE).parts[0]
        part = EXTRA_OF.get(sub, "")
        for module in third_party(top_level_imports(path)):
            if module not in dists and part == "nova" and module in NOT_IN_TEST_VENV:
                needed.setdefault(part, set()).add(NOT_IN_TEST_VENV[module])
                continue
            assert module in dists, f"{path}: {module} is imported but no installed distribution has it"
            needed.setdefault(part, set()).update(requirement_name(d) for d in dists[module])
    return needed


def test_dependencies_name_what_the_agent_side_imports() -> None:
    declared = {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert declared == needed_by_part()[""]


def test_each_extra_names_what_its_part_imports() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    core = {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    for part, needed in needed_by_part().items():
        if not part:
            continue
        declared = {requirement_name(r) for r in extras[part]} | core
        missing = needed - declared
        assert not missing, f"extra [{part}] lacks {sorted(missing)}"


def test_client_extra_brings_the_plugin_host() -> None:
    # The OSC commands are entry points in python-ironicclient's group: without
    # it installed neither `openstack baremetal node snapshot` nor `baremetal` exists.
    groups = PYPROJECT["project"]["entry-points"]
    assert "openstack.baremetal.v1" in groups
    client = {requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["client"]}
    assert "python-ironicclient" in client
