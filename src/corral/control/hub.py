"""The in-process event hub: agent status changes, task transitions and progress, fanned out
to server-sent-event streams. Each event carries its org; a subscriber sees one org or, for
the admin, all.

Every event gets an id, increasing, and the last :data:`REPLAY` events are kept so that a
stream that reconnects with the last id it saw (SSE ``Last-Event-ID``) gets what it missed.
An org whose last listener left less than :data:`GRACE_SECONDS` ago still counts as listened
to, so the news published while a stream reconnects is there to replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from corral.control.series import TaskSeries
from corral.domain.errors import RateLimited

__all__ = ["CLOSED", "GRACE_SECONDS", "REPLAY", "EventHub"]

#: The last item a subscriber receives when the hub closes.
CLOSED: dict[str, Any] = {"kind": "closed"}
#: how many recent events are kept for streams that reconnect
REPLAY = 1000
#: how long an org counts as listened to after its last stream closed
GRACE_SECONDS = 30.0


class EventHub:
    def __init__(self, *, queue_size: int = 1000) -> None:
        self._subs: set[tuple[str | None, asyncio.Queue[dict[str, Any]]]] = set()
        self._size = queue_size
        self._seq = 0
        self._recent: deque[dict[str, Any]] = deque(maxlen=REPLAY)
        self._left: dict[str | None, float] = {}  # scope → when its last stream closed
        #: per-org figures of the last hour (the task book feeds it)
        self.series = TaskSeries()

    def close(self) -> None:
        """Tell every subscriber the stream is over (the control plane is stopping)."""
        for _, q in list(self._subs):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(CLOSED)

    def wants(self, org: str) -> bool:
        """Whether anyone listens to ``org`` now, or did a moment ago (so news nobody reads
        is not even built)."""
        if any(scope is None or scope == org for scope, _ in self._subs):
            return True
        if not self._left:
            return False
        now = time.monotonic()
        return any(now - self._left.get(s, -GRACE_SECONDS) < GRACE_SECONDS for s in (org, None))

    @property
    def last_id(self) -> int:
        """The id of the newest event (0: none yet)."""
        return self._seq

    def recent(self, org: str, *, kind: str | None = None) -> list[dict[str, Any]]:
        """The kept events of ``org`` (of one ``kind``), oldest first."""
        return [e for e in self._recent if e["org"] == org and (kind is None or e["kind"] == kind)]

    def publish(self, org: str, kind: str, data: dict[str, Any]) -> None:
        self._seq += 1
        event = {
            "id": self._seq,
            "org": org,
            "kind": kind,
            "at": datetime.now(UTC).isoformat(),
            **data,
        }
        self._recent.append(event)
        for scope, q in list(self._subs):
            if scope is None or scope == org:
                with contextlib.suppress(asyncio.QueueFull):  # a slow reader drops, never blocks
                    q.put_nowait(event)

    def streams(self, org: str | None) -> int:
        """How many subscribers listen to exactly ``org`` (None: to every org)."""
        return sum(1 for scope, _ in self._subs if scope == org)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, org: str | None, *, limit: int | None = None, after: int | None = None
    ) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """``org=None`` sees every org (admin only; the API enforces who may ask). With
        ``after`` (the id of the last event a stream saw), the queue starts with the kept
        events after it, of this scope.

        Raises:
            RateLimited: ``org`` already has ``limit`` subscribers (each costs the hub a
                queue and a share of every event's fan-out, so one tenant may not open
                thousands).
        """
        if limit is not None and self.streams(org) >= limit:
            raise RateLimited(
                f"{'every org' if org is None else repr(org)} already has {limit} event "
                "streams open; close one first",
                retry_after=5.0,
                details={"org": org, "limit": limit},
            )
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._size)
        if after is not None:
            for event in self._recent:
                if event["id"] > after and (org is None or event["org"] == org):
                    with contextlib.suppress(asyncio.QueueFull):
                        q.put_nowait(event)
        entry = (org, q)
        self._subs.add(entry)
        try:
            yield q
        finally:
            self._subs.discard(entry)
            if self.streams(org) == 0:
                self._left[org] = time.monotonic()
                if len(self._left) > 10_000:  # bounded: forget the ones past their grace
                    now = time.monotonic()
                    self._left = {s: t for s, t in self._left.items() if now - t < GRACE_SECONDS}
