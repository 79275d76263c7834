"""Replicated control planes: ``corral up`` with ``CORRAL_HA`` on PostgreSQL and an external NATS.

Every replica serves the API on its own address from the moment it starts. Exactly one leads
(:mod:`corral.store.leases`): it runs the whole :class:`~corral.control.platform.Platform` and
answers the API itself. The others stand by: they campaign for the lease and forward every API
request (reads too, event streams included) to the leader's address recorded with the lease,
so a client may talk to any replica and never needs to know which one leads. While no leader
is known (a takeover under way) a standby holds the request for up to ``forward_wait``
seconds; a request that could not reach the leader at all is tried again, one that reached a
leader that died before answering is answered 503 (send ``idempotencyKey`` with a submission to
retry it safely).

When the leader loses its lease (it was paused or cut off past the lease, or another replica's
epoch refused its writes), it stops answering as the leader at once, tears its platform down
(its dispatcher and in-memory state go; nothing more is committed: see the fencing in
:mod:`corral.store.leases`) and stands by again. See docs/ha.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from corral.api.app import api_for, serve, warm
from corral.api.gateway_app import serving_gateway
from corral.api.server import http_config
from corral.control.leadership import Leader, Leadership
from corral.control.platform import Platform
from corral.domain.errors import Unavailable
from corral.settings import Settings

__all__ = ["Replica", "StandbyApp"]

log = logging.getLogger("corral.replica")
logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_HOP_BY_HOP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te"}


def _forwarded_for(
    headers: list[tuple[bytes, bytes]], client: tuple[str, int] | None
) -> list[tuple[bytes, bytes]]:
    """``headers`` with the client's address appended to ``X-Forwarded-For``."""
    if not client:
        return headers
    seen = [v for k, v in headers if k.lower() == b"x-forwarded-for"]
    chain = b", ".join([*seen, str(client[0]).encode("latin-1")])
    return [(k, v) for k, v in headers if k.lower() != b"x-forwarded-for"] + [
        (b"x-forwarded-for", chain)
    ]


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(data)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class StandbyApp:
    """The API of a standby: its health, and every other request forwarded to the leader."""

    def __init__(
        self,
        leadership: Leadership,
        *,
        forward_wait: float = 15.0,
        local: Callable[[], App | None] = lambda: None,
    ) -> None:
        self._leadership = leadership
        self._lease = leadership.lease
        self._local = local  # this replica's own leader API, once it leads
        self._wait = forward_wait
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0))
        self._known: tuple[float, Leader | None] = (0.0, None)

    async def close(self) -> None:
        await self._client.aclose()

    async def leader(self, *, fresh: bool = False) -> Leader | None:
        """The lease row, read at most every 0.2 s."""
        at, known = self._known
        if fresh or time.monotonic() - at > 0.2:
            known = await self._leadership.leader()
            self._known = (time.monotonic(), known)
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] in ("/healthz", "/readyz"):
            current = await self.leader()
            await _json(
                send,
                200,
                {
                    "status": "ok" if scope["path"] == "/healthz" else "ready",
                    "role": "standby",
                    "replica": self._lease.replica,
                    "leader": current.holder if current else None,
                    "epoch": current.epoch if current else None,
                },
            )
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await self._forward(scope, bytes(body), send)

    async def _target(self, deadline: float) -> str | App | None:
        """The leader's API address (or this replica's own API, if it leads now), waiting
        while none is known (or the one known is this replica, still starting to lead)."""
        fresh = False  # the leader read within 0.2 s first: no read of the row per request
        while True:
            local = self._local()
            if local is not None:
                return local
            current = await self.leader(fresh=fresh)
            fresh = True
            if (
                current is not None
                and current.api_url
                and current.api_url != self._lease.api_url
                and (current.age is None or current.age <= self._lease.lease_seconds)
            ):
                return current.api_url
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.1)

    async def _forward(self, scope: Scope, body: bytes, send: Send) -> None:
        deadline = time.monotonic() + self._wait
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        # the leader limits failed logins per client: say who the client is (it believes this
        # only if its replicas are among its CORRAL_TRUSTED_PROXIES)
        headers = _forwarded_for(headers, scope.get("client"))
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        while True:
            target = await self._target(deadline)
            if target is None:
                await _json(send, 503, _error("no leader is known yet: try again shortly"))
                return
            if not isinstance(target, str):  # elected meanwhile: answer here
                await target(scope, _replay(body), send)
                return
            url = target + path.decode("latin-1") + (("?" + query.decode()) if query else "")
            request = self._client.build_request(
                scope["method"], url, headers=headers, content=body
            )
            try:
                response = await self._client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if time.monotonic() > deadline:
                    await _json(send, 503, _error("the leader cannot be reached"))
                    return
                self._known = (0.0, None)
                await asyncio.sleep(0.1)
                continue  # it never reached the leader: safe to send again
            except httpx.HTTPError as exc:
                await _json(
                    send,
                    503,
                    _error(
                        f"the leader did not answer ({type(exc).__name__}); it may be "
                        "taking over: retry (with the same idempotencyKey for a submission)"
                    ),
                )
                return
            if response.status_code == 503:
                body_503 = await response.aread()
                await response.aclose()
                if b'"deposed"' in body_503 and time.monotonic() < deadline:
                    # that leader was deposed while answering and applied nothing: the new one
                    self._known = (0.0, None)
                    await asyncio.sleep(0.1)
                    continue
                await _send_read(send, response, body_503)
                return
            await self._relay(response, send)
            return

    async def _relay(self, response: httpx.Response, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k.lower(), v)
                        for k, v in response.headers.raw
                        if k.lower() not in _HOP_BY_HOP
                    ],
                }
            )
            with contextlib.suppress(httpx.HTTPError):
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


async def _send_read(send: Send, response: httpx.Response, body: bytes) -> None:
    headers = [
        (k.lower(), v)
        for k, v in response.headers.raw
        if k.lower() not in _HOP_BY_HOP and k.lower() != b"content-length"
    ]
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes) -> Receive:
    """The request's body, read already, for the app that answers it after all."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client's disconnect is never reported
        return {"type": "http.disconnect"}

    return receive


def _error(message: str) -> dict[str, Any]:
    return Unavailable(message).to_wire()


class _Switch:
    """The one ASGI app a replica's server runs: the leader's API while it leads, else the
    standby's."""

    def __init__(self, standby: App) -> None:
        self.standby = standby
        self.leader: App | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await (self.leader or self.standby)(scope, receive, send)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _server(app: App, *, trusted_proxies: Sequence[str] = ()) -> uvicorn.Server:
    return uvicorn.Server(http_config(app, trusted_proxies=trusted_proxies))


class Replica:
    """One replica: ``async with Replica(settings) as r:`` serves its API at once, stands by,
    leads when elected, steps down when deposed, until the block exits."""

    def __init__(
        self, settings: Settings, *, on_lead: Callable[[Platform], None] | None = None
    ) -> None:
        self.settings = settings
        name = settings.replica_name or f"{socket.gethostname()}-{os.getpid()}"
        self._sock = _bind(settings.host, settings.port)
        host, port = self._sock.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        try:
            self.leadership = Leadership(
                settings, replica=name, api_url=settings.advertise_url or self.url
            )
        except BaseException:
            self._sock.close()
            raise
        self.name = name
        self.standby = StandbyApp(self.leadership, local=lambda: self._switch.leader)
        self._switch = _Switch(self.standby)
        self._server = _server(self._switch, trusted_proxies=settings.trusted_proxies)
        self._on_lead = on_lead
        self._tasks: list[asyncio.Task[None]] = []
        self._api: asyncio.Task[FastAPI] | None = None  # the leader's API, made while standing by

    @property
    def platform(self) -> Platform | None:
        return self.leadership.platform

    @property
    def role(self) -> str:
        return "leader" if self._switch.leader is not None else "standby"

    async def __aenter__(self) -> Replica:
        loop = asyncio.get_running_loop()
        http = loop.create_task(self._server.serve(sockets=[self._sock]), name="corral-http")
        self._tasks.append(http)
        while not self._server.started:
            if http.done():
                http.result()
                raise Unavailable("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        self._api = loop.create_task(asyncio.to_thread(self._make_api), name="corral-api")
        self._tasks.append(
            loop.create_task(self.leadership.run(self._term), name="corral-leadership")
        )
        return self

    def _make_api(self) -> FastAPI:
        """The leader's API, made and warmed once, while standing by (on a thread: the
        standby's API goes on answering), and served for each term's platform."""
        app = api_for(self.settings)
        warm(app)
        return app

    async def __aexit__(self, *exc: object) -> None:
        for task in reversed(self._tasks):
            if task.get_name() == "corral-http":
                self._server.should_exit = True
            else:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._api is not None:
            self._api.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._api
        await self.standby.close()
        await self.leadership.lease.close()
        self._sock.close()

    async def wait(self) -> None:
        """Until the replica's work ends (it only ends by an error)."""
        await self._tasks[-1]

    @contextlib.asynccontextmanager
    async def _term(self, platform: Platform) -> AsyncIterator[None]:
        """One term as the leader: the platform's API (and its model gateway) served here."""
        assert self._api is not None  # made on entering
        app = await self._api  # made while standing by: the first requests find it built
        async with serving_gateway(platform.models.gateway, platform.models.socket):
            serve(app, platform)
            self._switch.leader = app
            try:
                if self._on_lead is not None:
                    self._on_lead(platform)
                yield
            finally:
                self._switch.leader = None  # answer as a standby from now on
                platform.hub.close()  # ends every event stream
