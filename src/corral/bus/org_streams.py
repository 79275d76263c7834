"""Each org's streams (INBOX, EVENTS and its object store), made when the org first needs them.

An org's account costs the server little until it is used; its streams cost it their stores
and the control plane a connection into the account to make them. A thousand orgs that run
nothing would pay that a thousand times, so the control plane makes an org's streams with its
first agent (or the first object it keeps for it), not when the org is created or restored:
an idle org costs its account alone, and creating one pushes one account and nothing else.

A stream made late is made with the limits the org's account holds then, so it gets its
plan's sizes however late it comes; a plan change resizes the streams that exist (and makes
none). What one org does here is done under that org's lock, so a stream is never made with
one plan's sizes while another plan is being applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.js.errors import NotFoundError

from corral.bus import streams
from corral.bus.failures import translating
from corral.bus.feeds import EventFeeds
from corral.bus.links import OrgLinks
from corral.bus.objects import ObjectStores
from corral.domain import subjects
from corral.domain.errors import NotFound
from corral.domain.plans import BusLimits

__all__ = ["OrgStreams"]


class OrgStreams:
    """Which orgs' streams this control plane made or found, and making them."""

    def __init__(
        self,
        links: OrgLinks,
        objects: ObjectStores,
        feeds: EventFeeds,
        *,
        consumer: str,
        replicas: int,
    ) -> None:
        self._links = links
        self._objects = objects
        self._feeds = feeds
        self._consumer = consumer
        self._replicas = replicas
        self._made: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    def __contains__(self, org: str) -> bool:
        return org in self._made

    @asynccontextmanager
    async def lock(self, org: str) -> AsyncIterator[None]:
        """One change of ``org``'s streams at a time (kept only while someone holds it)."""
        lock = self._locks.setdefault(org, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._locks.get(org) is lock:
                del self._locks[org]

    async def ensure(self, org: str, limits: BusLimits) -> None:
        """Make ``org``'s streams, or bring them to ``limits`` (under :meth:`lock`)."""
        async with self._links.use(org) as link:
            with translating(f"creating the streams of {org!r}"):
                await streams.ensure_inbox(link.js, org, limits, replicas=self._replicas)
                backlog = await streams.ensure_events(
                    link.js, org, limits, consumer=self._consumer, replicas=self._replicas
                )
        await self._objects.ensure(org, limits)
        self._feeds.note_backlog(org, backlog)
        self._made.add(org)

    async def exist(self, org: str) -> bool:
        """Whether ``org``'s streams were made (by this control plane or before it)."""
        if org in self._made:
            return True
        async with self._links.use(org) as link:
            with translating(f"looking for the streams of {org!r}"):
                try:
                    await link.js.stream_info(subjects.INBOX_STREAM)
                except NotFoundError:
                    return False
        return True

    async def needed(self, org: str) -> None:
        """``org``'s streams exist on return, made now with its account's limits if need be.

        Raises:
            NotFound: the org has no bus account.
            Conflict / Unavailable: as :meth:`ensure`.
        """
        if org in self._made:
            return
        async with self.lock(org):
            if org in self._made:
                return
            limits = self._links.authority.limits(org)
            if limits is None:
                raise NotFound(f"organization {org!r} has no bus account", details={"org": org})
            await self.ensure(org, limits)

    def forget(self, org: str) -> None:
        """``org``'s streams are gone (it is being removed)."""
        self._made.discard(org)
