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
import threading
import time
from collections.abc import Iterator

from tests.stack.glance import free_port

__all__ = ["ThrottleProxy", "throttle_proxy"]

#: Bytes forwarded at a time.
CHUNK = 64 * 1024


class ThrottleProxy:
    """The running proxy.

    :ivar endpoint: ``http://127.0.0.1:PORT``, what clients are given instead
        of the upstream's address.
    :ivar sent: bytes forwarded upstream so far (all connections).
    """

    def __init__(self, upstream_port: int, rate: float) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.sent = 0
        self._rate = rate
        self._upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()

    def serve(self) -> None:
        self._listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
            for target, args in ((self._pipe, (upstream, client, None)),
                                 (self._pipe, (client, upstream, self._rate))):
                threading.Thread(target=target, args=args, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def _pipe(self, source: socket.socket, sink: socket.socket, rate: float | None) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(CHUNK):
                sink.sendall(data)
                if rate is not None:
                    self.sent += len(data)
                    time.sleep(len(data) / rate)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def throttle_proxy(upstream_port: int, *, rate: float) -> Iterator[ThrottleProxy]:
    """A :class:`ThrottleProxy` in front of ``127.0.0.1:upstream_port`` passing
    at most ``rate`` bytes per second from each client to the upstream."""
    proxy = ThrottleProxy(upstream_port, rate)
    thread = threading.Thread(target=proxy.serve, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
        thread.join(timeout=5)
