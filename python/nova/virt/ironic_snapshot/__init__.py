"""``compute_driver = ironic_snapshot.IronicDriver``: Nova loads drivers from ``nova.virt`` only.

Shipped by ironic-snapshot without ``nova/__init__.py`` or
``nova/virt/__init__.py``, so it merges into the installed Nova.
"""

from ironic_snapshot.nova import IronicDriver

__all__ = ["IronicDriver"]
