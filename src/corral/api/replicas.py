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
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import uvicorn

from corral.api.app import create_app
from corral.api.gateway_app import create_gateway_app
from corral.control.platform import Platform
from corral.domain.errors import InvalidInput, Unavailable
from corral.settings import Settings
from corral.store.leases import Leader, LeaderLease

__all__ = ["Replica", "StandbyApp", "check_replicable"]

log = logging.getLogger("corral.replica")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_HOP_BY_HOP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te"}


def check_replicable(settings: Settings) -> None:
    """Replicas need a store and a bus they all share.

    Raises:
        InvalidInput: SQLite, or no external NATS.
    """
    url = settings.resolved_database_url
    if not url.startswith(("postgresql", "postgres")):
        raise InvalidInput(
            "CORRAL_HA needs PostgreSQL (CORRAL_DATABASE_URL=postgresql://...): on SQLite one "
            "control plane runs per database, under its writer lock"
        )
    if not settings.nats_url:
        raise InvalidInput(
            "CORRAL_HA needs the NATS every replica shares (CORRAL_NATS_URL): an embedded "
            "nats-server would die with its replica"
        )


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

    def __init__(self, lease: LeaderLease, *, forward_wait: float = 15.0) -> None:
        self._lease = lease
        self._wait = forward_wait
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0))
        self._known: tuple[float, Leader | None] = (0.0, None)

    async def close(self) -> None:
        await self._client.aclose()

    async def leader(self, *, fresh: bool = False) -> Leader | None:
        """The lease row, read at most every 0.2 s."""
        at, known = self._known
        if fresh or time.monotonic() - at > 0.2:
            try:
                known = await self._lease.leader()
            except Unavailable:
                known = None
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

    async def _target(self, deadline: float) -> str | None:
        """The leader's API address, waiting while none is known (or the one known is us)."""
        while True:
            current = await self.leader(fresh=True)
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
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        while True:
            target = await self._target(deadline)
            if target is None:
                await _json(send, 503, _error("no leader is known yet: try again shortly"))
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


def _server(app: App) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=3
        )
    )


class Replica:
    """One replica: ``async with Replica(settings) as r:`` serves, stands by, leads when
    elected, steps down when deposed, until the block exits."""

    def __init__(self, settings: Settings, *, on_lead: Callable[[Platform], None] | None = None):
        check_replicable(settings)
        self.settings = settings
        self.name = settings.replica_name or f"{socket.gethostname()}-{os.getpid()}"
        self._sock = _bind(settings.host, settings.port)
        host, port = self._sock.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        self.lease = LeaderLease(
            settings.resolved_database_url,
            replica=self.name,
            api_url=settings.advertise_url or self.url,
            lease_seconds=settings.lease_seconds,
        )
        self.standby = StandbyApp(self.lease)
        self._switch = _Switch(self.standby)
        self._server = _server(self._switch)
        self._on_lead = on_lead
        self.platform: Platform | None = None  # while leading
        self.terms = 0  # how many times this replica was elected
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def role(self) -> str:
        return "leader" if self.platform is not None else "standby"

    async def __aenter__(self) -> Replica:
        loop = asyncio.get_running_loop()
        http = loop.create_task(self._server.serve(sockets=[self._sock]), name="corral-http")
        self._tasks.append(http)
        while not self._server.started:
            if http.done():
                http.result()
                raise Unavailable("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        self._tasks.append(loop.create_task(self._run(), name="corral-replica"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._tasks[1].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._tasks[1]
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._tasks[0]
        await self.standby.close()
        await self.lease.close()
        self._sock.close()

    async def wait(self) -> None:
        """Until the replica's work ends (it only ends by an error)."""
        await self._tasks[1]

    async def _run(self) -> None:
        while True:
            await self.lease.campaign()
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("leading failed; standing by again")
            finally:
                self._switch.leader = None
                self.platform = None
                await self.lease.close()  # the session, its advisory lock and the epoch go
            await asyncio.sleep(self.lease.poll_seconds)

    async def _lead(self) -> None:
        self.terms += 1
        async with contextlib.AsyncExitStack() as stack:
            platform = await stack.enter_async_context(Platform(self.settings, lease=self.lease))
            stack.callback(platform.hub.close)
            gateway = _server(create_gateway_app(platform.models.gateway))
            serving = asyncio.get_running_loop().create_task(
                gateway.serve(sockets=[platform.models.socket]), name="corral-gateway-http"
            )
            stack.push_async_callback(_stopped, gateway, serving)
            self.platform = platform
            self._switch.leader = create_app(platform)
            if self._on_lead is not None:
                self._on_lead(platform)
            why = await _first(self.lease.hold(), _deposed(platform))
            log.error("replica %s steps down: %s", self.name, why)
            self._switch.leader = None  # answer as a standby from now on


async def _deposed(platform: Platform) -> str:
    await platform.deposed.wait()
    return "another replica's epoch refused this one's writes"


async def _first(*waits: Awaitable[str]) -> str:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _stopped(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def replica(settings: Settings) -> AsyncIterator[Replica]:
    async with Replica(settings) as r:
        yield r
