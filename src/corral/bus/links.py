"""The control plane's connections into org accounts, kept while the org is active.

PLATFORM imports nothing from the orgs (see :mod:`corral.bus.claims`), so the control plane
reaches an org through a connection of its own in that org's account: an :class:`OrgLink`.
Over it go the deliveries into INBOX (pipelined), the control requests, the management of the
org's streams and consumers, and the org's event feed (see :mod:`corral.bus.feeds`).

A link is opened on first use and kept while the org is active: used (an agent prepared, a
task delivered) or reporting events. After :data:`IDLE_SECONDS` of neither, its feed retires
it, so an org without running agents costs no connection. A link is also replaced before its
credentials expire, and the least recently active ones retire when more than ``max_links``
are open. Retiring is graceful: the link stops taking new users, its feed finishes its
current pull and the batch the control plane still holds, and only then is it closed; a
successor's feed starts only after that, so an org's events are never read by two feeds at
once (nor acknowledged out of order).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

from nats.aio.client import Client
from nats.js.client import JetStreamContext

from corral.bus.accounts import BusAuthority
from corral.bus.acks import PipelinedPublisher
from corral.bus.failures import ViolationRecorder, open_connection
from corral.domain.errors import NotFound

__all__ = ["IDLE_SECONDS", "LINK_TTL_SECONDS", "MAX_LINKS", "OrgLink", "OrgLinks"]

log = logging.getLogger(__name__)

#: an org whose link saw no use and no event this long has it closed
IDLE_SECONDS = 60.0
#: a link's credentials expire after this; it is replaced at 80 % of it
LINK_TTL_SECONDS = 3600
MAX_LINKS = 1024

Feed = Callable[["OrgLink", "asyncio.Task[None] | None"], Awaitable[None]]


class OrgLink:
    """One connection in one org's account, and what runs over it."""

    def __init__(self, org: str, nc: Client, *, timeout: float, idle_seconds: float) -> None:
        self.org = org
        self.idle_seconds = idle_seconds
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=timeout)
        self.publisher = PipelinedPublisher(nc)
        self.opened = time.monotonic()
        self.last_active = self.opened
        self.users = 0
        self.retiring = False
        self.feed: asyncio.Task[None] | None = None
        #: called when the connection was made again (a pull out may have died with the
        #: server that held it)
        self.on_reconnect: list[Callable[[], None]] = []

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def idle_for(self, now: float) -> float:
        return 0.0 if self.users else now - self.last_active

    @property
    def usable(self) -> bool:
        return not self.retiring and not self.nc.is_closed

    async def close(self) -> None:
        """Close the connection; bounded, since a client closing in the middle of a
        reconnect may otherwise wait for a server that is not there."""
        with suppress(Exception):
            await asyncio.wait_for(self.publisher.close(), 2.0)
        with suppress(Exception):
            await asyncio.wait_for(self.nc.close(), 5.0)


class OrgLinks:
    """The open :class:`OrgLink` per org. ``feed(link, predecessor)`` runs for each link
    opened, until the link retires (it must wait for ``predecessor``, the previous link's
    feed of the same org, before reading anything)."""

    def __init__(
        self,
        url: str,
        authority: BusAuthority,
        *,
        feed: Feed,
        timeout: float,
        max_links: int = MAX_LINKS,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.url = url
        self.authority = authority
        self.timeout = timeout
        self.max_links = max_links
        self.idle_seconds = idle_seconds
        self._feed = feed
        self._links: OrderedDict[str, OrgLink] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._feeds: dict[str, asyncio.Task[None]] = {}  # the latest feed task per org
        self._closing: set[asyncio.Task[None]] = set()
        self._retired: set[OrgLink] = set()  # retiring, not yet closed

    def __len__(self) -> int:
        return len(self._links)

    def __contains__(self, org: str) -> bool:
        return org in self._links

    def peek(self, org: str) -> OrgLink | None:
        """The org's open link, if any; not counted as activity."""
        link = self._links.get(org)
        return link if link is not None and link.usable else None

    def links(self) -> list[OrgLink]:
        return list(self._links.values())

    def _fresh(self, link: OrgLink | None) -> bool:
        return (
            link is not None
            and link.usable
            and time.monotonic() - link.opened < 0.8 * LINK_TTL_SECONDS
        )

    async def get(self, org: str) -> OrgLink:
        """The org's link, opened if need be; counts as activity.

        Raises:
            NotFound: the org has no bus account.
            Unauthenticated / Unavailable: the connection was refused or failed.
        """
        link = self._links.get(org)
        if link is None or not self._fresh(link):
            link = await self._open(org)
        self._links.move_to_end(org)
        link.touch()
        return link

    @asynccontextmanager
    async def use(self, org: str) -> AsyncIterator[OrgLink]:
        """The org's link, kept from retiring while the block runs."""
        link = await self.get(org)
        link.users += 1
        try:
            yield link
        finally:
            link.users -= 1
            link.touch()

    async def _open(self, org: str) -> OrgLink:
        lock = self._locks.setdefault(org, asyncio.Lock())
        async with lock:
            kept = self._links.get(org)
            if kept is not None and self._fresh(kept):
                return kept
            if self.authority.limits(org) is None:
                raise NotFound(f"organization {org!r} has no bus account", details={"org": org})
            creds = self.authority.mint_org_link_creds(org, ttl_seconds=LINK_TTL_SECONDS)
            hooks: list[Callable[[], None]] = []

            async def reconnected() -> None:
                for hook in list(hooks):
                    hook()

            nc = await open_connection(
                self.url,
                creds,
                name=f"{org}-platform-link",
                recorder=ViolationRecorder(name=f"{org}-platform-link"),
                timeout=self.timeout,
                reconnected=reconnected,
            )
            link = OrgLink(org, nc, timeout=self.timeout, idle_seconds=self.idle_seconds)
            link.on_reconnect = hooks
            await link.publisher.start()
            if kept is not None:
                self.retire(kept)
            self._links[org] = link
            predecessor = self._feeds.get(org)
            task = asyncio.create_task(self._run_feed(link, predecessor), name=f"feed-{org}")
            self._feeds[org] = link.feed = task
            self._evict()
            return link

    async def _run_feed(self, link: OrgLink, predecessor: asyncio.Task[None] | None) -> None:
        try:
            await self._feed(link, predecessor)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the event feed of %s failed", link.org)
        finally:
            self.retire(link)
            if self._feeds.get(link.org) is link.feed:
                del self._feeds[link.org]

    def _evict(self) -> None:
        over = len(self._links) - self.max_links
        if over <= 0:
            return
        now = time.monotonic()
        idle = sorted(self._links.values(), key=lambda link: -link.idle_for(now))
        for link in idle[:over]:
            log.warning("more than %d org links open: closing %s's", self.max_links, link.org)
            self.retire(link)

    def retire(self, link: OrgLink) -> None:
        """Stop giving ``link`` out; it closes once its feed and its users are done."""
        if self._links.get(link.org) is link:
            del self._links[link.org]
        if link.retiring:
            return
        link.retiring = True
        self._retired.add(link)
        closing = asyncio.create_task(self._close_when_done(link), name=f"close-{link.org}")
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _close_when_done(self, link: OrgLink) -> None:
        if link.feed is not None and link.feed is not asyncio.current_task():
            with suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(link.feed), timeout=300)
        deadline = time.monotonic() + self.timeout
        while link.users and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await link.close()
        self._retired.discard(link)

    async def drop(self, org: str) -> None:
        """Close the org's link now (the org is being removed)."""
        link = self._links.pop(org, None)
        task = self._feeds.pop(org, None)
        for feed in (task, link.feed if link else None):
            if feed is not None and not feed.done():
                feed.cancel()
                with suppress(BaseException):
                    await asyncio.wait_for(feed, 5.0)
        if link is not None:
            link.retiring = True
            await link.close()

    async def close(self) -> None:
        for org in list(self._links):
            await self.drop(org)
        for feed in list(self._feeds.values()):
            feed.cancel()
            with suppress(BaseException):
                await asyncio.wait_for(feed, 5.0)
        self._feeds.clear()
        for closing in list(self._closing):
            closing.cancel()
            with suppress(BaseException):
                await closing
        for link in list(self._retired):
            await link.close()
        self._retired.clear()
