"""The in-process event hub: agent status changes, task transitions and progress, fanned out
to server-sent-event streams. Each event carries its org; a subscriber sees one org or, for
the admin, all."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from corral.domain.errors import RateLimited

__all__ = ["CLOSED", "EventHub"]

#: The last item a subscriber receives when the hub closes.
CLOSED: dict[str, Any] = {"kind": "closed"}


class EventHub:
    def __init__(self, *, queue_size: int = 1000) -> None:
        self._subs: set[tuple[str | None, asyncio.Queue[dict[str, Any]]]] = set()
        self._size = queue_size

    def close(self) -> None:
        """Tell every subscriber the stream is over (the control plane is stopping)."""
        for _, q in list(self._subs):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(CLOSED)

    def wants(self, org: str) -> bool:
        """Whether anyone listens to ``org`` now (so news nobody reads is not even built)."""
        return any(scope is None or scope == org for scope, _ in self._subs)

    def publish(self, org: str, kind: str, data: dict[str, Any]) -> None:
        event = {"org": org, "kind": kind, "at": datetime.now(UTC).isoformat(), **data}
        for scope, q in list(self._subs):
            if scope is None or scope == org:
                with contextlib.suppress(asyncio.QueueFull):  # a slow reader drops, never blocks
                    q.put_nowait(event)

    def streams(self, org: str | None) -> int:
        """How many subscribers listen to exactly ``org`` (None: to every org)."""
        return sum(1 for scope, _ in self._subs if scope == org)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, org: str | None, *, limit: int | None = None
    ) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """``org=None`` sees every org (admin only; the API enforces who may ask).

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
        entry = (org, q)
        self._subs.add(entry)
        try:
            yield q
        finally:
            self._subs.discard(entry)
