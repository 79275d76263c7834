"""Calling an OpenAI-compatible upstream: one pooled HTTP client for every provider.

The provider key is set on each request's ``Authorization`` header here and nowhere else; it
is never logged. Transport failures become :class:`~corral.domain.errors.Unavailable` naming the
upstream (never the key), so the gateway can answer the agent a 502 in OpenAI's error shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from corral.domain.errors import Unavailable

__all__ = ["UpstreamReply", "Upstreams"]


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
    def __init__(self, *, timeout: float = 600.0, max_connections: int = 1000) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
        )

    async def close(self) -> None:
        await self._client.aclose()

    @staticmethod
    def _headers(key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}", "content-type": "application/json"}

    async def post(self, url: str, *, key: str, body: bytes) -> UpstreamReply:
        """POST ``body`` to ``url``; any HTTP status is a reply.

        Raises:
            Unavailable: the upstream could not be reached or did not answer in time.
        """
        try:
            r = await self._client.post(url, content=body, headers=self._headers(key))
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"model upstream {_where(url)} failed: {type(exc).__name__}",
                details={"upstream": _where(url)},
            ) from exc
        return UpstreamReply(r.status_code, r.headers.get("content-type", ""), r.content)

    @asynccontextmanager
    async def stream(self, url: str, *, key: str, body: bytes) -> AsyncIterator[UpstreamStream]:
        """POST ``body`` and read the answer as server-sent event lines.

        Raises:
            Unavailable: the upstream could not be reached, or the stream broke.
        """
        try:
            async with self._client.stream(
                "POST", url, content=body, headers=self._headers(key)
            ) as r:
                content_type = r.headers.get("content-type", "")
                if r.status_code != 200:
                    yield UpstreamStream(r.status_code, content_type, _no_lines(), await r.aread())
                    return
                yield UpstreamStream(r.status_code, content_type, _lines(r, url))
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"model upstream {_where(url)} failed: {type(exc).__name__}",
                details={"upstream": _where(url)},
            ) from exc


async def _lines(response: httpx.Response, url: str) -> AsyncIterator[str]:
    try:
        async for line in response.aiter_lines():
            yield line
    except httpx.HTTPError as exc:
        raise Unavailable(
            f"model upstream {_where(url)} broke the stream: {type(exc).__name__}",
            details={"upstream": _where(url)},
        ) from exc


async def _no_lines() -> AsyncIterator[str]:
    return
    yield  # pragma: no cover - makes this an async generator


def _where(url: str) -> str:
    return httpx.URL(url).copy_with(path="/", query=None).host or "upstream"
