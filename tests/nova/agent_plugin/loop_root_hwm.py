"""Test-only agent hardware manager: the node's root device hint may name a loop device.

ironic-python-agent considers only block devices of type ``disk`` for root
device hints, so a hint naming ``/dev/loopN`` matches nothing and a step run
without a ``device`` argument (as from Nova) finds no disk. This manager, at
a higher support level than the generic one, answers
``get_os_install_device`` with the hinted loop device, and defers to the
others for anything else. Loaded only by the agents the Nova tests start
(through ``PYTHONPATH``); never part of the product.
"""

from ironic_python_agent import errors, hardware


class LoopRootHardwareManager(hardware.HardwareManager):
    """Answers the root device with the node's ``root_device`` hint when it is a loop device."""

    HARDWARE_MANAGER_NAME = "LoopRootHardwareManager"
    HARDWARE_MANAGER_VERSION = "1.0"

    def evaluate_hardware_support(self):
        return hardware.HardwareSupport.MAINLINE

    def get_os_install_device(self, permit_refresh=False):
        node = hardware.get_cached_node() or {}
        name = ((node.get("properties") or {}).get("root_device") or {}).get("name") or ""
        if name.startswith("/dev/loop"):
            return name
        raise errors.IncompatibleHardwareMethodError()
