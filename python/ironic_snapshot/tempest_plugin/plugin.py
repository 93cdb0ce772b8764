"""The tempest plugin (entry point ``tempest.test_plugins``)."""

from __future__ import annotations

import os

from tempest.test_discover import plugins

from ironic_snapshot.tempest_plugin import config

__all__ = ["IronicSnapshotTempestPlugin"]


class IronicSnapshotTempestPlugin(plugins.TempestPlugin):
    """Scenario tests of the ``snapshot_disk`` service step and its client."""

    def load_tests(self):
        """Returns the tests' folder and the folder that holds the package."""
        base = os.path.split(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))[0]
        tests = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests")
        return tests, base

    def register_opts(self, conf):
        """Registers ``[service_available] ironic_snapshot`` and ``[baremetal_snapshot]``."""
        conf.register_opt(config.service_available_option, group="service_available")
        conf.register_group(config.snapshot_group)
        conf.register_opts(config.snapshot_options, group=config.snapshot_group)

    def get_opt_lists(self):
        """The options, for tempest's sample configuration."""
        return [
            ("service_available", [config.service_available_option]),
            (config.snapshot_group.name, config.snapshot_options),
        ]
