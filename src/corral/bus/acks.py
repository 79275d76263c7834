"""JetStream publishes whose acknowledgements are awaited together.

nats-py's ``publish_async`` never resolves the future of a publish the server refused (its reply
handler raises the error instead of setting it), so a full inbox would look like a timeout. This
is the same pipelining done by hand: one reply subscription, a future per publish, the server's
answer — acknowledgement or error — set on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["PipelinedPublisher"]

_STATUS = "Status"
_NO_RESPONDERS = "503"


class PipelinedPublisher:
    """Publish to JetStream without waiting; :meth:`publish` returns a future of the PubAck
    (``{"stream", "seq", ...}``) or of the server's error as a nats-py exception."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._ids = itertools.count()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def publish(
        self, subject: str, payload: bytes, *, headers: dict[str, str]
    ) -> asyncio.Future[dict[str, Any]]:
        await self.start()
        token = str(next(self._ids))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        future.add_done_callback(lambda _: self._waiting.pop(token, None))
        try:
            await self._nc.publish(
                subject, payload, reply=f"{self._prefix}.{token}", headers=headers
            )
        except BaseException:
            future.cancel()  # never sent: nothing will answer it
            raise
        return future

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject.rsplit(".", 1)[-1])
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            future.set_exception(nats.errors.NoRespondersError())
            return
        try:
            reply = orjson.loads(msg.data)
        except orjson.JSONDecodeError as exc:
            future.set_exception(nats.errors.Error(f"malformed acknowledgement: {exc}"))
            return
        error = reply.get("error") if isinstance(reply, dict) else None
        if isinstance(error, dict):
            future.set_exception(
                nats.js.errors.APIError(
                    code=error.get("code"),
                    err_code=error.get("err_code"),
                    description=error.get("description"),
                )
            )
        elif isinstance(reply, dict):
            future.set_result(reply)
        else:
            future.set_exception(nats.errors.Error("malformed acknowledgement"))

    async def close(self) -> None:
        for future in list(self._waiting.values()):
            future.cancel()
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(nats.errors.Error):  # the connection may be gone already
                await sub.unsubscribe()
