"""Nova integration: a compute driver that snapshots bare-metal servers.

:class:`IronicDriver` is Nova's Ironic driver plus ``snapshot`` (``openstack
server image create``) through the ``snapshot_disk`` service step. Nova loads
drivers only from ``nova.virt``, so the ``[nova]`` extra also installs the
two-line package ``nova.virt.ironic_snapshot`` that re-exports it: set
``compute_driver = ironic_snapshot.IronicDriver``.
"""

from typing import Any

__all__ = ["IronicDriver"]


def __getattr__(name: str) -> Any:
    # Imported on first use only: the configuration module (for
    # oslo-config-generator) must load where Nova is not installed.
    if name == "IronicDriver":
        from ironic_snapshot.nova.driver import IronicDriver

        return IronicDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
