"""The API's HTTP server bounds a request's head: a client that sends endless headers is
answered 431 and cut off, while a head within the bound, a large body and a kept-alive
connection are served as ever. Over a real socket, with the server the API runs on."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from corral.api.protocol import MAX_HEAD
from corral.api.server import http_config
from tests.support import eventually


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the size of the body it read."""
    size = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def _serving() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(http_config(_app))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:

        def started() -> bool:
            if task.done():  # it stopped instead of serving: at once, not at the deadline
                raise RuntimeError(f"the server stopped while starting: {task!r}")
            return server.started

        await eventually(started, timeout=30, message="the server serving")
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, await asyncio.wait_for(reader.readexactly(length), timeout=30)


async def test_an_endless_header_is_refused_and_the_connection_closed() -> None:
    async with _serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nx-endless: ")
        sent = 0
        with contextlib.suppress(ConnectionError):  # the server may cut it off mid-send
            while sent < 50 * MAX_HEAD and not reader.at_eof():
                writer.write(b"a" * 1024)  # never a line's end: one header that never ends
                await writer.drain()
                sent += 1024
                if sent % (4 * MAX_HEAD) == 0:
                    await asyncio.sleep(0)  # let the answer in
        # the answer, or (when the client's bytes were still unread as the server closed) a
        # reset: either way cut off; with no bound this would wait for an answer in vain
        try:
            status, body = await _answer(reader)
        except (ConnectionResetError, asyncio.IncompleteReadError):
            pass
        else:
            assert status == 431 and str(MAX_HEAD).encode() in body
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), timeout=30) == b""  # closed
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # others are served still
        assert await _answer(reader) == (200, b"0")
        writer.close()


@pytest.mark.parametrize("in_one_send", [True, False])
async def test_a_head_within_the_bound_a_large_body_and_a_second_request_are_served(
    in_one_send: bool,
) -> None:
    async with _serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        filler = b"b" * (MAX_HEAD - 200)  # the whole head just under the bound
        body = b"c" * (4 * 1024 * 1024)  # a body is not the head
        request = (
            b"POST / HTTP/1.1\r\nhost: x\r\nx-filler: " + filler + b"\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        if in_one_send:
            writer.write(request)
        else:
            for start in range(0, len(request), 1000):
                writer.write(request[start : start + 1000])
        await writer.drain()
        assert await _answer(reader) == (200, str(len(body)).encode())
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # the same connection again
        await writer.drain()
        assert await _answer(reader) == (200, b"0")
        writer.close()
