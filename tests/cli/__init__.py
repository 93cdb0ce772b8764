"""Tests of the ``ironic-snapshot`` CLI and of the Glance sink, on real disks and a real Glance."""
