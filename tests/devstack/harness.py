"""Runs devstack/plugin.sh phases in bash against stand-ins for DevStack.

DevStack itself cannot run here (it wants a whole cloud host), so the
functions the plugin calls from DevStack (``is_service_enabled``,
``pip_install``, ``iniset``, ``die`` ...) are defined in the driver script and
record each call, and the external commands the plugin runs (``openstack``,
``maturin``, ``cargo``, ``disk-image-create``) are recording programs on PATH.
The Glance image the runbook fills is made by the plugin's
``devstack/tools/queued-image`` (openstacksdk) in a real Glance: see
:func:`glance_cloud`. The real ``ironic-python-agent-builder`` runs: it finds the
ironic-python-agent-ramdisk element and calls the stand-in
``disk-image-create``, which resolves the requested elements with
diskimage-builder's real dependency resolver before it writes the kernel and
initramfs files a real build would.

Every call lands as one JSON object per line in ``calls.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.stack.glance import GlanceServer, start_glance

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "devstack" / "plugin.sh"
SETTINGS = REPO / "devstack" / "settings"
ELEMENTS = REPO / "devstack" / "elements"
VENV_BIN = Path(sys.executable).parent

#: Node UUIDs the stand-in ``openstack baremetal node list`` prints.
NODES = ["1be26c0b-03f2-4d2d-ae87-c02d7f33c781", "4f5e0a8c-9b1e-4c53-8a61-2f1d3b0c6e94"]
#: File name of the wheel the stand-in maturin writes.
WHEEL_NAME = "ironic_snapshot-0.1.0-cp311-abi3-manylinux_2_28_x86_64.whl"

# One program serves as every stand-in; it learns its role from argv[0].
_RECORDER = r'''#!PYTHON
import json, os, subprocess, sys
from pathlib import Path

name = Path(sys.argv[0]).name
args = sys.argv[1:]
record = {"cmd": name, "args": args, "cwd": os.getcwd(),
          "env": {k: v for k, v in os.environ.items()
                  if k.startswith(("DIB_", "ELEMENTS_PATH", "IRONIC_SNAPSHOT_"))}}
state = Path(os.environ["HARNESS_DIR"])

if name == "openstack" and "--steps" in args:
    # The plugin deletes its rendered file afterwards: keep what it said.
    record["steps"] = json.loads(Path(args[args.index("--steps") + 1]).read_text())
with open(state / "calls.jsonl", "a") as log:
    log.write(json.dumps(record) + "\n")

def opt(flag):
    return args[args.index(flag) + 1]

if name == "maturin":
    out = Path(opt("--out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / os.environ["HARNESS_WHEEL_NAME"]).write_bytes(b"wheel from maturin")
elif name == "disk-image-create":
    import diskimage_builder
    from diskimage_builder import element_dependencies
    # disk-image-create appends its own elements to ELEMENTS_PATH.
    own = Path(diskimage_builder.__file__).parent / "elements"
    elements_path = os.environ["ELEMENTS_PATH"] + ":" + str(own)
    requested = [a for a in args[2:] if not a.startswith("-")]
    # Raises (and fails the build) if an element or a dependency is missing.
    found = element_dependencies.get_elements(requested, elements_path)
    with open(state / "elements.json", "w") as f:
        json.dump(dict(found), f)
    # Run this project's extra-data.d hooks for real (the other elements'
    # hooks need a chroot): they copy the wheel where install.d finds it.
    hooks = state / "hooks"
    hooks.mkdir(exist_ok=True)
    for script in sorted((Path(dict(found)["ironic-snapshot"]) / "extra-data.d").iterdir()):
        subprocess.run([str(script)], check=True, env=dict(os.environ, TMP_HOOKS_PATH=str(hooks)))
    out = opt("-o")
    Path(out + ".kernel").write_bytes(b"kernel " + " ".join(requested).encode())
    Path(out + ".initramfs").write_bytes(b"initramfs " + " ".join(requested).encode())
elif name == "openstack":
    words = [a for a in args if not a.startswith("-")]
    fail = os.environ.get("HARNESS_FAIL", "")
    if fail and fail in " ".join(args):
        sys.exit(1)
    if "runbook" in words and "show" in words:
        # No runbook yet unless the test says there is one.
        sys.exit(0 if os.environ.get("HARNESS_RUNBOOK_EXISTS") else 1)
    if "node" in words and "list" in words:
        print("\n".join(os.environ["HARNESS_NODES"].split()))
'''

# DevStack's functions, recording instead of acting; the rest of the driver
# sources settings and then plugin.sh once per phase, as stack.sh does.
_DRIVER = r"""
set -o errexit -o nounset -o pipefail
record() {
    "$HARNESS_PYTHON" -c 'import json, sys; print(json.dumps({"cmd": sys.argv[1], "args": sys.argv[2:]}))' "$@" >> "$HARNESS_DIR/calls.jsonl"
}
is_service_enabled() {
    local s
    for s in "$@"; do
        [[ " $HARNESS_SERVICES " == *" $s "* ]] && return 0
    done
    return 1
}
trueorfalse() {
    local default=$1 name=$2 value
    value=${!name:-$default}
    case ${value,,} in
        1 | yes | true | on) echo True ;;
        *) echo False ;;
    esac
}
pip_install() { record pip_install "$@"; }
pip_uninstall() { record pip_uninstall "$@"; }
iniset() { record iniset "$@"; }
echo_summary() { echo "summary: $*"; }
die() {
    shift
    record die "$*"
    echo "die: $*" >&2
    exit 1
}
die_if_not_set() {
    local line=$1 name=$2
    shift 2
    [[ -n ${!name:-} ]] || die "$line" "$*"
}
source "$HARNESS_SETTINGS"
# Like lib/glance, which DevStack may source after the plugin settings.
if [[ -n ${HARNESS_LATE_GLANCE_URL:-} ]]; then
    # shellcheck disable=SC2034  # read by plugin.sh
    GLANCE_URL=$HARNESS_LATE_GLANCE_URL
fi
for phase in $HARNESS_PHASES; do
    # shellcheck disable=SC2086
    source "$HARNESS_PLUGIN" ${phase//:/ }
done
"""


@dataclass
class Result:
    """What one driver run did."""

    returncode: int
    stdout: str
    stderr: str
    calls: list[dict[str, Any]]
    dir: Path

    def of(self, cmd: str) -> list[dict[str, Any]]:
        """Calls of one command or DevStack function, in order."""
        return [c for c in self.calls if c["cmd"] == cmd]

    def openstack(self) -> list[list[str]]:
        """Arguments of every ``openstack`` call, without ``--os-cloud X``."""
        out = []
        for c in self.of("openstack"):
            args = list(c["args"])
            if args[:1] == ["--os-cloud"]:
                args = args[2:]
            out.append(args)
        return out


@dataclass
class Harness:
    """A DevStack stand-in in a temp folder; :meth:`run` runs plugin phases."""

    root: Path
    services: list[str] = field(default_factory=lambda: ["ir-api", "ir-cond", "glance", "tempest"])
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bin = self.root / "bin"
        self.bin.mkdir(parents=True)
        recorder = self.root / "recorder"
        recorder.write_text(_RECORDER.replace("PYTHON", sys.executable, 1))
        recorder.chmod(0o755)
        for name in ("openstack", "maturin", "cargo", "disk-image-create"):
            (self.bin / name).symlink_to(recorder)
        # The real builder, installed in the test virtualenv.
        builder = shutil.which("ironic-python-agent-builder", path=str(VENV_BIN))
        assert builder, "ironic-python-agent-builder is missing from the test virtualenv: install tests/requirements.txt"
        (self.bin / "ironic-python-agent-builder").symlink_to(builder)
        self.dest = self.root / "opt-stack"
        self.files = self.dest / "devstack" / "files"
        self.files.mkdir(parents=True)
        self.home = self.root / "home"
        self.home.mkdir()

    @property
    def kernel(self) -> Path:
        """Where Ironic's plugin expects the deploy kernel."""
        return self.files / "ir-deploy-ipmi.kernel"

    @property
    def ramdisk(self) -> Path:
        """Where Ironic's plugin expects the deploy ramdisk."""
        return self.files / "ir-deploy-ipmi.initramfs"

    def run(self, *phases: str, **env: str) -> Result:
        """Runs the phases (``"stack:install"``, ``"clean"`` ...) in one shell."""
        log = self.root / "calls.jsonl"
        log.unlink(missing_ok=True)
        driver = self.root / "driver.sh"
        driver.write_text(textwrap.dedent(_DRIVER))
        base = {
            # A PATH without the machine's cargo, maturin or openstack.
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "HARNESS_DIR": str(self.root),
            "HARNESS_PYTHON": sys.executable,
            "HARNESS_SETTINGS": str(SETTINGS),
            "HARNESS_PLUGIN": str(PLUGIN),
            "HARNESS_PHASES": " ".join(phases),
            "HARNESS_SERVICES": " ".join(self.services),
            "HARNESS_WHEEL_NAME": WHEEL_NAME,
            "HARNESS_NODES": " ".join(NODES),
            # DevStack's own variables the plugin reads.
            "DEST": str(self.dest),
            "DATA_DIR": str(self.dest / "data"),
            "TOP_DIR": str(self.dest / "devstack"),
            "PYTHON": sys.executable,
            "GLANCE_URL": "http://192.0.2.10/image",
            "TEMPEST_CONFIG": str(self.dest / "tempest" / "etc" / "tempest.conf"),
            "IRONIC_DEPLOY_KERNEL": str(self.kernel),
            "IRONIC_DEPLOY_RAMDISK": str(self.ramdisk),
            "IRONIC_DEPLOY_ISO": str(self.files / "ir-deploy-ipmi.iso"),
        }
        base.update(self.env)
        base.update(env)
        proc = subprocess.run(
            ["bash", str(driver)],
            env=base,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return Result(proc.returncode, proc.stdout, proc.stderr, calls, self.root)


@contextlib.contextmanager
def glance_cloud(workdir: Path) -> Iterator[tuple[GlanceServer, Path]]:
    """A real Glance and a ``clouds.yaml`` whose ``devstack-admin`` cloud reaches it."""
    with start_glance(workdir / "glance") as glance:
        clouds = workdir / "clouds.yaml"
        clouds.write_text(
            "clouds:\n"
            "  devstack-admin:\n"
            "    auth_type: none\n"
            "    auth:\n"
            # Never asked: the baremetal commands go to the stand-in.
            "      endpoint: http://127.0.0.1:9\n"
            f"    image_endpoint_override: {glance.endpoint}\n"
        )
        yield glance, clouds
