"""What every scenario of the plugin shares: the feature flag and the Ironic client."""

from __future__ import annotations

from tempest import config
from tempest import test

from ironic_snapshot.tempest_plugin.services.baremetal import BaremetalClient

CONF = config.CONF


class SnapshotScenario(test.BaseTestCase):
    """Skipped unless ``[service_available] ironic_snapshot``; ``cls.baremetal`` as system_admin.

    Subclasses list ``system_admin`` in their ``credentials`` (Ironic's
    admin is system scoped) and add their own checks and clients.
    """

    @classmethod
    def skip_checks(cls):
        super().skip_checks()
        if not CONF.service_available.ironic_snapshot:
            raise cls.skipException(
                "ironic-snapshot is not available: set [service_available] ironic_snapshot = True "
                "when the agent ramdisk has its hardware manager")

    @classmethod
    def setup_clients(cls):
        super().setup_clients()
        cls.baremetal = BaremetalClient(
            cls.os_system_admin.auth_provider, "baremetal", CONF.identity.region,
            build_interval=2, build_timeout=CONF.baremetal_snapshot.service_timeout,
            **cls.os_system_admin.default_params)

    @classmethod
    def resource_setup(cls):
        super().resource_setup()
        cls.baremetal.negotiate()
