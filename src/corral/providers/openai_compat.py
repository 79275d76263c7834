"""Calling an OpenAI-compatible upstream: one pooled HTTP client for every provider.

The provider key is set on each request's ``Authorization`` header here and nowhere else; it
is never logged. Transport failures become :class:`~corral.domain.errors.Unavailable` naming the
upstream (never the key), so the gateway can answer the agent a 502 in OpenAI's error shape.
The client is aiohttp's: it sits on every model call's path, and its per-request cost is a
fraction of a millisecond (see ``benchmarks/gateway.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from corral.domain.errors import Unavailable

__all__ = ["UpstreamReply", "UpstreamStream", "Upstreams"]


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    status: int
    content_type: str
    body: bytes


@dataclass(slots=True)
class UpstreamStream:
    status: int
    content_type: str
    lines: AsyncIterator[str]
    body: bytes = b""  # an error's body, when status is not 200


class Upstreams:
    """Start in a running event loop; :meth:`close` before the loop ends."""

    def __init__(self, *, timeout: float = 600.0, max_connections: int = 1000) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=10.0)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30),
                timeout=self._timeout,
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def _headers(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def post(self, url: str, *, key: str, body: bytes) -> UpstreamReply:
        """POST ``body`` to ``url``; any HTTP status is a reply.

        Raises:
            Unavailable: the upstream could not be reached or did not answer in time.
        """
        try:
            async with self._client().post(url, data=body, headers=self._headers(key)) as r:
                return UpstreamReply(r.status, r.headers.get("Content-Type", ""), await r.read())
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _unavailable(url, exc) from exc

    @asynccontextmanager
    async def stream(self, url: str, *, key: str, body: bytes) -> AsyncIterator[UpstreamStream]:
        """POST ``body`` and read the answer as server-sent event lines.

        Raises:
            Unavailable: the upstream could not be reached, or the stream broke.
        """
        try:
            async with self._client().post(url, data=body, headers=self._headers(key)) as r:
                content_type = r.headers.get("Content-Type", "")
                if r.status != 200:
                    yield UpstreamStream(r.status, content_type, _no_lines(), await r.read())
                    return
                yield UpstreamStream(r.status, content_type, _lines(r, url))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _unavailable(url, exc) from exc


async def _lines(response: aiohttp.ClientResponse, url: str) -> AsyncIterator[str]:
    try:
        async for raw in response.content:
            yield raw.decode("utf-8", "replace").rstrip("\r\n")
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _unavailable(url, exc, what="broke the stream") from exc


async def _no_lines() -> AsyncIterator[str]:
    return
    yield  # pragma: no cover - makes this an async generator


def _unavailable(url: str, exc: BaseException, *, what: str = "failed") -> Unavailable:
    host = urlsplit(url).hostname or "upstream"
    return Unavailable(
        f"model upstream {host} {what}: {type(exc).__name__}", details={"upstream": host}
    )
