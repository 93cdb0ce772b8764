"""An HTTP proxy on loopback that flips one byte of an image upload on its way to Glance.

The one fake part of the real-stack tests, for a fault real parts do not
produce on demand: Glance storing other bytes than the agent sent (a broken
NIC offload, a proxy or store bug). Everything else passes through untouched:
each client connection gets its own upstream connection, responses are piped
as they come, and requests are parsed only as far as needed to find the body
of ``PUT /v2/images/{id}/file`` (chunked or with a length) and to flip one
byte of its data, never of the chunk framing, so the request stays valid and
Glance computes its digests over the flipped data.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from tests.stack.loopback_proxy import CHUNK, LoopbackProxy, running


class FlipProxy(LoopbackProxy):
    """The running proxy.

    :ivar endpoint: ``http://127.0.0.1:PORT``, to give the step as its Glance endpoint.
    :ivar flipped: how many bytes were flipped (at most one per upload).
    """

    def __init__(self, upstream_port: int, flip_at: int) -> None:
        super().__init__(upstream_port)
        self.flipped = 0
        self._flip_at = flip_at

    def _relays(self, client: socket.socket, upstream: socket.socket):
        return [(self._pipe, (upstream, client)), (self._requests, (client, upstream))]

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                upstream.sendall(head)
                request_line, _, header_text = head.decode("latin-1").partition("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (h.partition(":") for h in header_text.split("\r\n") if h)}
                upload = request_line.startswith("PUT ") and "/file " in request_line
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    self._chunked(reader, upstream, upload)
                else:
                    self._data(reader, upstream, int(headers.get("content-length", 0)),
                               upload, 0)
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

    def _chunked(self, reader, upstream: socket.socket, upload: bool) -> None:
        offset = 0
        while True:
            size_line = reader.readline()
            upstream.sendall(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := reader.readline()) not in (b"\r\n", b""):
                    upstream.sendall(trailer)
                upstream.sendall(b"\r\n")
                return
            offset = self._data(reader, upstream, size, upload, offset)
            upstream.sendall(reader.read(2))  # the CRLF after the chunk data

    def _data(self, reader, upstream: socket.socket, size: int, upload: bool,
              offset: int) -> int:
        """Forwards ``size`` body bytes starting at body ``offset``; returns the new offset."""
        while size:
            data = bytearray(reader.read(min(size, CHUNK)))
            if not data:
                raise OSError("client went away")
            at = self._flip_at - offset
            if upload and not self.flipped and 0 <= at < len(data):
                data[at] ^= 0x01
                self.flipped += 1
            upstream.sendall(data)
            offset += len(data)
            size -= len(data)
        return offset


@contextlib.contextmanager
def flip_proxy(upstream_port: int, *, flip_at: int) -> Iterator[FlipProxy]:
    """A :class:`FlipProxy` in front of ``127.0.0.1:upstream_port``, flipping
    the lowest bit of upload body byte ``flip_at``."""
    with running(FlipProxy(upstream_port, flip_at)) as proxy:
        yield proxy
