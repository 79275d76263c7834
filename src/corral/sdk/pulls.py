"""Pull requests to a JetStream consumer, made by hand: the control plane reads each org's
events with them, and an agent its inbox.

nats-py's ``fetch`` neither bounds a batch's bytes (a tenant's 1 MB messages would make one
fetch of 256 cost 256 MB) nor lets a long poll end as soon as one message is there: a
message that arrives during its long poll can wait in the client until the poll expires
(seconds, with the task it carries unstarted and its agent idle). A
:class:`Puller` asks first for what is waiting (``no_wait``), and only if nothing is, for one
message with a long ``expires``, then for the rest of the batch: an idle consumer costs one
request per ``wait`` seconds, a busy one answers at once. Every request carries ``max_bytes``.

Each delivered message says how many more the consumer holds (``num_pending`` in its reply
subject). When the last one fetched said none, the next fetch goes straight to the long poll
(which answers at once if one came meanwhile), and one that brings a message with none behind
it does not ask for the rest: a consumer that gets a message now and then (an agent's inbox
batch, an org's events) costs one request per message, not three.

Each request is waited for until its terminal status or its expiry: a message the server
sends to a request nobody waits for any more would be acknowledged, unseen, by the
cumulative acknowledgement of a later one. The one exception is :meth:`Puller.interrupt`,
for a reconnect: a request made before it may have died with the server that held it (a
restarted one knows nothing of it), so waiting out its expiry would leave messages unread
for that long; what an old request still brings is read by the next fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["Puller"]

_STATUS = "Status"
_DESCRIPTION = "Description"
_HEARTBEAT = "100"
_NO_MESSAGES = "404"
_EXPIRED = "408"
_CONFLICT = "409"  # e.g. "Message Size Exceeds MaxBytes", "Exceeded MaxWaiting"


def _batch_completed(msg: Msg) -> bool:
    """The status that follows a request fulfilled by its count when it had ``max_bytes``."""
    headers = msg.headers or {}
    return headers.get(_STATUS) == _CONFLICT and headers.get(_DESCRIPTION) == "Batch Completed"


def _pending(msg: Msg) -> bool:
    """Whether more messages may wait behind ``msg``: the consumer had more it never delivered
    (its reply subject says how many), or ``msg`` is a redelivery (redeliveries due are not in
    that count: after a takeover they come many at once); true when that cannot be read."""
    try:
        metadata = msg.metadata
        return metadata.num_pending > 0 or (metadata.num_delivered or 0) > 1
    except Exception:
        return True


class Puller:
    """Batches from one durable pull consumer over ``nc``; :meth:`start` before
    :meth:`fetch`, :meth:`stop` when done."""

    def __init__(
        self, nc: Client, *, stream: str, consumer: str, max_bytes: int, timeout: float
    ) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._inbox = nc.new_inbox()
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue()  # None: interrupted
        self._sub: Subscription | None = None
        #: whether the last message fetched said more were waiting behind it
        self._more = True

    async def start(self) -> None:
        async def on_msg(msg: Msg) -> None:
            self._queue.put_nowait(msg)

        self._sub = await self._nc.subscribe(self._inbox, cb=on_msg)

    def interrupt(self) -> None:
        """End the request under way now, as if it expired (the connection was made again:
        the next fetch asks the server that is there now)."""
        self._queue.put_nowait(None)
        self._more = True

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def fetch(self, batch: int, *, wait: float) -> list[Msg]:
        """Up to ``batch`` messages: what is waiting now, else the first to arrive within
        ``wait`` seconds and whatever followed it. Empty if nothing came.

        Raises:
            nats.js.errors.APIError: the server refused the pull (e.g. no such consumer).
        """
        if self._more:
            got = await self._pull(batch, expires=None)
            if got:
                self._more = _pending(got[-1])
                return got
        got = await self._pull(1, expires=wait)
        if got and batch > 1 and _pending(got[-1]):
            got += await self._pull(batch - 1, expires=None)
        self._more = bool(got) and _pending(got[-1])
        return got

    async def _pull(self, batch: int, *, expires: float | None) -> list[Msg]:
        request: dict[str, Any] = {"batch": batch, "max_bytes": self._max_bytes}
        if expires is None:
            request["no_wait"] = True
        else:
            request["expires"] = int(expires * 1_000_000_000)
        await self._nc.publish(self._subject, orjson.dumps(request), reply=self._inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (expires or 0.0) + self._timeout
        got: list[Msg] = []
        while len(got) < batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                msg = await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                break
            if msg is None:  # interrupted
                break
            status = msg.headers.get(_STATUS) if msg.headers else None
            if status is None:
                got.append(msg)
            elif status == _HEARTBEAT or _batch_completed(msg):
                continue  # an earlier request's end: it was counted complete already
            elif status in (_NO_MESSAGES, _EXPIRED) or (status == _CONFLICT and got):
                break
            else:
                assert msg.headers is not None
                raise nats.js.errors.APIError(
                    code=int(status), description=msg.headers.get(_DESCRIPTION, "")
                )
        return got
