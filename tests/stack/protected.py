"""Glance and Ironic behind keystonemiddleware, as the client and Nova tests run them.

Both set ``[keystone_authtoken] service_type`` (so application credential
access rules are enforced) and turn the token cache off (so a deleted
credential is refused at once). The helpers' REST calls act as the cloud
admin: a project-scoped token for Glance, a system-scoped one for Ironic.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path

from tests.stack.glance import GlanceServer, start_glance
from tests.stack.ironic import IronicServer, start_ironic
from tests.stack.keystone import KeystoneServer

__all__ = ["keystone_glance", "keystone_ironic"]


def keystone_glance(keystone: KeystoneServer, workdir: Path, port: int
                    ) -> AbstractContextManager[GlanceServer]:
    """Starts (as a context manager) a Glance that checks tokens with ``keystone``."""
    return start_glance(
        workdir, flavor="keystone", port=port, token=keystone.admin_project_token,
        extra_conf={"keystone_authtoken": keystone.authtoken_conf(
            # No token cache: a deleted credential must be refused at once.
            "glance", service_type="image", token_cache_time="-1")})


def keystone_ironic(keystone: KeystoneServer, workdir: Path, port: int,
                    extra_conf: Mapping[str, Mapping[str, str]] | None = None,
                    token_cache_time: int = -1) -> AbstractContextManager[IronicServer]:
    """Starts (as a context manager) an Ironic that checks tokens with ``keystone``.

    :param extra_conf: more sections merged over Ironic's config.
    :param token_cache_time: seconds keystonemiddleware keeps a validated
        token; -1 (no cache) refuses a deleted credential's token at once.
    """
    conf: dict[str, dict[str, str]] = {
        "DEFAULT": {"auth_strategy": "keystone"},
        "keystone_authtoken": keystone.authtoken_conf(
            "ironic", service_type="baremetal", token_cache_time=str(token_cache_time))}
    for section, values in (extra_conf or {}).items():
        conf.setdefault(section, {}).update(values)
    return start_ironic(workdir, port=port, extra_conf=conf,
                        client_env=keystone.env("admin", keystone.admin_password, system=True),
                        token=keystone.admin_token)
