"""Tempest from PyPI, run by the tests against a loopback cloud.

A workspace of its own (registered in a file beside it, never in
``~/.tempest``), a ``tempest.conf`` written from a dict, ``tempest run``
with the REST logging kept in the workspace's ``tempest.log``, and the
parsing of its output into scenario outcomes.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["TEMPEST", "init_workspace", "write_conf", "run", "summary", "outcomes"]

#: The tempest command of the tests' virtualenv.
TEMPEST = Path(sys.executable).parent / "tempest"


def init_workspace(root: Path) -> Path:
    """``tempest init`` of a workspace under ``root``; returns its folder."""
    subprocess.run([str(TEMPEST), "init", "--workspace-path", str(root / "workspaces.yaml"),
                    str(root / "ws")], check=True, capture_output=True, timeout=120)
    return root / "ws"


def write_conf(workspace: Path, keystone: Any, baremetal_snapshot: dict[str, str], *,
               nova: bool = False, ironic_snapshot: bool = True) -> None:
    """Writes the workspace's ``etc/tempest.conf`` for a loopback cloud.

    Tempest makes its own throwaway users with ``keystone``'s admin; the
    cloud has Glance, Nova only when ``nova``, and the plugin's flag and
    ``[baremetal_snapshot]`` options as given. Logging goes into the workspace.
    """
    conf = configparser.ConfigParser()
    conf.read_dict({
        "DEFAULT": {"log_file": "tempest.log", "debug": "true",
                    "log_dir": str(workspace / "logs")},
        "auth": {"use_dynamic_credentials": "true", "create_isolated_networks": "false",
                 "admin_username": "admin", "admin_password": keystone.admin_password,
                 "admin_project_name": "admin", "admin_domain_name": "Default"},
        "identity": {"uri_v3": keystone.auth_url, "auth_version": "v3",
                     "region": "RegionOne"},
        "service_available": {"glance": "true", "nova": str(nova).lower(), "neutron": "false",
                              "cinder": "false", "swift": "false",
                              "ironic_snapshot": str(ironic_snapshot).lower()},
        "baremetal_snapshot": baremetal_snapshot,
    })
    with open(workspace / "etc" / "tempest.conf", "w") as out:
        conf.write(out)


def run(workspace: Path, regex: str, timeout: float = 1800) -> tuple[str, int]:
    """Runs ``tempest run --serial --regex REGEX``; returns its output and exit code.

    The REST calls' logging goes to the workspace's ``tempest.log`` only
    (``OS_LOG_CAPTURE=0``), so the output holds results and tracebacks; each
    run's output is also kept in ``logs/run-N.txt``.
    """
    result = subprocess.run([str(TEMPEST), "run", "--serial", "--regex", regex],
                            cwd=workspace, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OS_LOG_CAPTURE": "0"})
    output = result.stdout + result.stderr
    logs = workspace / "logs"
    logs.mkdir(exist_ok=True)
    (logs / f"run-{len(list(logs.glob('run-*')))}.txt").write_text(output)
    return output, result.returncode


def summary(output: str) -> str:
    """The result lines and the failures' tracebacks of a tempest output."""
    lines = [line[:500] for line in output.splitlines() if line.strip()]
    results = [line for line in lines
               if " ... " in line or re.match(r" ?- (Passed|Skipped|Failed)", line)]
    failures = lines[next((i for i, line in enumerate(lines) if "tests - output below" in line),
                          len(lines)):]
    return "\n".join(results + failures[:200])


def outcomes(output: str, test_class: str) -> dict[str, str]:
    """Test name -> ``ok``, ``FAILED`` or ``SKIPPED: reason`` for one class's tests."""
    found = {}
    for name, outcome in re.findall(
            rf"{re.escape(test_class)}\.(test_\w+)(?:\[[^\]]*\])? (?:\[[\d.]+s\] )?"
            r"\.\.\. (ok|FAILED|SKIPPED: .*)", output):
        found[name] = outcome
    return found
