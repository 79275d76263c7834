"""What every request passes before any route sees it: who is calling, how big and how deep
its body is, and whether its address has been failing to authenticate.

Why here and not in the routes: FastAPI reads and decodes a body before it resolves the
dependency that authenticates, and buffers a body sent without ``Content-Length`` whole. So a
caller with no key at all could make the control plane hold any number of bytes, and a payload
nested a thousand deep reached the decoder. This ASGI layer, in order:

1. refuses a declared ``Content-Length`` over the limit (413) without reading anything; the
   limit is ``max_body``, but ``max_task_body`` for a task's submit (``POST .../tasks``), whose
   payload may be larger than any other body (it goes to the org's object store);
2. authenticates a request that may carry a body (``POST``/``PUT``/``PATCH``/``DELETE`` under
   ``/v1/``) from its headers alone, and answers 401 before reading the body if the key is bad;
   the caller it found travels in the request's state so the route does not look it up again;
3. reads the body while counting, and answers 413 as soon as it passes the limit;
4. refuses JSON nested deeper than :data:`corral.domain.documents.MAX_DEPTH` (422);
5. limits requests without a valid key per client address *and* per key they name (429 once
   either bucket is empty; see :class:`LoginLimiter`) — the API's and the console's alike.

The client address is the connection's peer. ``X-Forwarded-For`` is believed only from the
proxies the operator names (``CORRAL_TRUSTED_PROXIES``; the HTTP server rewrites the address
from it then), else one client could spread a flood over as many addresses as it cares to
write.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.errors import error_response
from corral.control.keys import split_key
from corral.domain.documents import check_raw_depth
from corral.domain.errors import CorralError, RateLimited, Unauthenticated

__all__ = ["AddressLimiter", "Authenticator", "BodyGuard", "LoginLimiter", "presented_key"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SUBMIT = re.compile(r"^/v1/orgs/[^/]+/tasks/?$")

#: resolves an ASGI scope's credentials to a caller, raising Unauthenticated
Authenticator = Callable[[Scope], Any]


class AddressLimiter:
    """Token buckets per client address (or per whatever else names the caller: ``what``)
    for requests that fail to authenticate.

    Bounded: it remembers at most ``max_addresses`` addresses, forgetting the least recently
    seen first (an address forgotten starts again with a full bucket, which only helps it by
    one burst).
    """

    def __init__(
        self,
        *,
        rate: float = 2.0,
        burst: int = 20,
        max_addresses: int = 10_000,
        what: str = "from",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._max = max_addresses
        self._what = what
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, address: str, now: float) -> float:
        tokens, last = self._buckets.get(address, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - last) * self.rate)

    def check(self, address: str) -> None:
        """Raise :class:`RateLimited` if ``address`` has no failure left to spend."""
        now = self._clock()
        tokens = self._tokens(address, now)
        if tokens < 1.0:
            raise RateLimited(
                f"too many requests without a valid API key {self._what} {address}; "
                f"at most {self.rate:g}/s (burst {self.burst})",
                retry_after=(1.0 - tokens) / self.rate,
            )

    def failed(self, address: str) -> None:
        """Spend one token for a request from ``address`` that failed to authenticate."""
        now = self._clock()
        tokens = self._tokens(address, now)
        self._buckets[address] = (max(0.0, tokens - 1.0), now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)


class LoginLimiter:
    """Failed authentications, limited per client address and per key named.

    Per address alone, a flood spread over many addresses (each with a fresh burst, and more
    of them than the limiter remembers) could try secrets of one key without end; so every key
    id that fails spends its own bucket too, whoever sends it, and once it is empty that key is
    refused (429) before it is looked up — its owner included, until the flood stops: the
    price of a lockout, which gains the flood nothing (a secret is 256 random bits). A string
    that is not a key at all (no key id) spends only its address's bucket. Both are bounded,
    and each attempt is a constant amount of work before the store is asked.
    """

    def __init__(
        self,
        *,
        addresses: AddressLimiter | None = None,
        key_rate: float = 0.2,
        key_burst: int = 20,
        max_keys: int = 100_000,
    ) -> None:
        self.addresses = addresses or AddressLimiter()
        self.keys = AddressLimiter(
            rate=key_rate, burst=key_burst, max_addresses=max_keys, what="for the key"
        )

    def check(self, address: str, key: str | None) -> None:
        """Raise :class:`RateLimited` if ``address`` or the key ``key`` names has no failure
        left to spend."""
        self.addresses.check(address)
        key_id = _key_id(key)
        if key_id is not None:
            self.keys.check(key_id)

    def failed(self, address: str, key: str | None) -> None:
        """Spend one failure of ``address`` and of the key ``key`` names."""
        self.addresses.failed(address)
        key_id = _key_id(key)
        if key_id is not None:
            self.keys.failed(key_id)


def _key_id(key: str | None) -> str | None:
    parts = split_key(key.strip()) if key else None
    return parts[0][:64] if parts else None


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request carries: ``Authorization: Bearer <key>``, else ``X-API-Key``."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return x_api_key


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class BodyGuard:
    """The ASGI middleware described in this module's docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        authenticate: Authenticator,
        limiter: LoginLimiter,
        max_task_body: int | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_task_body = max(max_body, max_task_body or max_body)
        self.authenticate = authenticate
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self._guard(scope, receive, send)
        except CorralError as exc:
            response = error_response(exc.http_status, exc.code, exc.message, exc.details)
            if isinstance(exc, RateLimited):
                response.headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.5)))
            await response(scope, receive, send)

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", ())}
        length = headers.get("content-length")
        submit = scope["method"] == "POST" and _SUBMIT.match(scope["path"]) is not None
        limit = self.max_task_body if submit else self.max_body
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._too_large(scope, receive, send, limit)
            return
        if scope["method"] not in _BODY_METHODS or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        key = presented_key(
            headers.get("authorization", b"").decode("latin-1") or None,
            headers.get("x-api-key", b"").decode("latin-1") or None,
        )
        self.limiter.check(address, key)
        try:
            who = await self.authenticate(scope)
        except Unauthenticated:
            self.limiter.failed(address, key)
            raise
        scope.setdefault("state", {})["caller"] = who
        body = await self._read(receive, limit)
        if body is None:
            await self._too_large(scope, receive, send, limit)
            return
        if body and b"json" in headers.get("content-type", b"json"):
            check_raw_depth(body, what="request body")
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive, limit: int) -> bytes | None:
        """The whole body, or None as soon as it is over the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(
            413, "payload_too_large", f"request body is over the {limit}-byte limit"
        )
        response.headers["Connection"] = "close"  # what is left of the body is not read
        await response(scope, receive, send)


def _replay(body: bytes, then: Receive) -> Receive:
    """The body read already, then whatever the client sends next (its disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive
