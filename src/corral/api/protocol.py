"""The HTTP protocol the API is served with: uvicorn's, over httptools (HTTP parsed in C), with
the request head bounded.

Why bounded here: the pure-Python parser uvicorn otherwise uses (h11) refuses a request line and
headers over 16 KiB, but the httptools protocol keeps whatever comes until the head ends, so a
client (no key needed: the head is read before anything checks one) could send one endless
header and grow the control plane's memory without limit. Here the bytes a connection sends
while a request's head is incomplete are counted, and past :data:`MAX_HEAD` it is answered
``431`` and closed: a head is held to that plus one read of the socket.

Where httptools is not installed the protocol is h11's, bounded by h11 itself.
"""

from __future__ import annotations

import asyncio

__all__ = ["MAX_HEAD", "http_protocol"]

#: the most bytes of a request line and headers: h11's own bound, which the API always had
MAX_HEAD = 16 * 1024

_WHY = f"the request line and headers are over {MAX_HEAD} bytes\n".encode()
_REFUSAL = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_WHY)).encode() + b"\r\n"
    b"connection: close\r\n"
    b"\r\n" + _WHY
)


def http_protocol() -> type[asyncio.Protocol] | str:
    """The protocol class for ``uvicorn.Config(http=...)``."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a dependency
        return "h11"

    class BoundedHead(HttpToolsProtocol):
        """httptools' protocol, refusing a request whose head grows past :data:`MAX_HEAD`."""

        _in_head = True  # a connection starts with a request's head
        _head_bytes = 0

        def data_received(self, data: bytes) -> None:
            in_head = self._in_head
            super().data_received(data)
            if in_head and self._in_head and not self.transport.is_closing():
                self._head_bytes += len(data)  # all of it went to a head not yet complete
                if self._head_bytes > MAX_HEAD:
                    self.transport.write(_REFUSAL)
                    self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._head_bytes = 0

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

    return BoundedHead
