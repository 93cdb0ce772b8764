"""The wheel's Nova shim: ``nova/virt/ironic_snapshot/__init__.py`` and nothing else of Nova.

Nova loads compute drivers only as ``nova.virt.<compute_driver>``, so the
wheel carries one re-exporting package there. It must merge into the
installed Nova: a ``nova/__init__.py`` or ``nova/virt/__init__.py`` of ours
would overwrite Nova's own on install.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path


def test_wheel_holds_only_the_shim_under_nova(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        shim = z.read("nova/virt/ironic_snapshot/__init__.py").decode()
    assert sorted(n for n in names if n.startswith("nova/")) == [
        "nova/virt/ironic_snapshot/__init__.py"]
    assert "from ironic_snapshot.nova import IronicDriver" in shim
    assert "ironic_snapshot/nova/driver.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as z:
        text = z.read(entry_points).decode()
    assert "ironic_snapshot.nova=ironic_snapshot.nova.conf:list_opts" in text.replace(" ", "")


def test_nova_options_load_without_nova() -> None:
    # oslo-config-generator imports the options' module where Nova may be
    # absent; the test venv has no Nova.
    code = ("try:\n"
            "    import nova.virt.ironic\n"
            "except ImportError:\n"
            "    pass\n"
            "else:\n"
            "    raise SystemExit('Nova is installed in the test venv')\n"
            "from ironic_snapshot.nova.conf import list_opts\n"
            "[(group, opts)] = list_opts()\n"
            "print(group, sorted(o.name for o in opts))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ironic_snapshot ['auth_url', 'clean_shutdown'"), out.stdout

