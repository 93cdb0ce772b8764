"""A TCP proxy on loopback that slows what clients send down to a fixed rate.

A slow link between the ramdisk and Glance, for the token expiry tests: an
upload through it takes as long as its size over the rate, so a capture
honestly outlasts a short-lived Keystone token. Nothing is changed on the
way; answers come back at full speed; each client connection gets its own
upstream connection.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

from tests.stack.loopback_proxy import CHUNK, LoopbackProxy, running

__all__ = ["ThrottleProxy", "throttle_proxy"]

class ThrottleProxy(LoopbackProxy):
    """The running proxy.

    :ivar endpoint: ``http://127.0.0.1:PORT``, what clients are given instead
        of the upstream's address.
    :ivar sent: bytes forwarded upstream so far (all connections).
    """

    def __init__(self, upstream_port: int, rate: float) -> None:
        super().__init__(upstream_port)
        self.sent = 0
        self._rate = rate

    def _relays(self, client: socket.socket, upstream: socket.socket):
        return [(self._pipe, (upstream, client)), (self._throttled, (client, upstream))]

    def _throttled(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(CHUNK):
                sink.sendall(data)
                self.sent += len(data)
                time.sleep(len(data) / self._rate)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def throttle_proxy(upstream_port: int, *, rate: float) -> Iterator[ThrottleProxy]:
    """A :class:`ThrottleProxy` in front of ``127.0.0.1:upstream_port`` passing
    at most ``rate`` bytes per second from each client to the upstream."""
    with running(ThrottleProxy(upstream_port, rate)) as proxy:
        yield proxy
