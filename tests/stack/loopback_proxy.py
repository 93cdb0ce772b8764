"""The TCP proxy on loopback that the fault-making proxies share.

It listens on a free port of 127.0.0.1, gives each client connection its
own connection to the upstream and hands the two sockets to the subclass,
which says what runs in each direction (:meth:`LoopbackProxy._relays`).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from tests.stack.glance import free_port

__all__ = ["LoopbackProxy", "running"]

#: Bytes forwarded at a time.
CHUNK = 64 * 1024

P = TypeVar("P", bound="LoopbackProxy")


class LoopbackProxy:
    """A proxy in front of ``127.0.0.1:upstream_port``.

    :ivar endpoint: ``http://127.0.0.1:PORT``, what clients are given instead
        of the upstream's address.
    """

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()

    def _relays(self, client: socket.socket, upstream: socket.socket
                ) -> list[tuple[Callable[..., Any], tuple[Any, ...]]]:
        """The functions (with their arguments) that move one connection's bytes."""
        raise NotImplementedError

    def serve(self) -> None:
        """Accepts clients until :meth:`close`; each gets a thread per relay."""
        self._listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
            for target, args in self._relays(client, upstream):
                threading.Thread(target=target, args=args, daemon=True).start()

    def close(self) -> None:
        """Stops accepting clients."""
        self._stop.set()
        self._listener.close()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        """Forwards everything from ``source`` to ``sink`` as it comes."""
        with contextlib.suppress(OSError):
            while data := source.recv(CHUNK):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def running(proxy: P) -> Iterator[P]:
    """Serves ``proxy`` in a thread while the block runs, then closes it."""
    thread = threading.Thread(target=proxy.serve, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
        thread.join(timeout=5)
