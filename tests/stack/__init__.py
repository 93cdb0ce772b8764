"""Real OpenStack services on loopback for the test suites (Glance, Ironic, IPA, Keystone)."""
