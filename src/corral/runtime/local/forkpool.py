"""One fork server per organization: started on the org's first start, closed once it idles.

Never shared between organizations: children of one server share its address-space layout
(ASLR), its stack canary and its hash seed, which must not leak from one tenant's agent to
another's. A server is started on the first start of an org's agent that it can run, and again
after it dies; once no agent of the org runs and none is being started, it is closed after
``ZYGOTE_IDLE_SECONDS``. A server that cannot be started is not an error: the agent is exec'd
instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any

from corral.domain.errors import Unavailable
from corral.runtime.local.forkbox import Box
from corral.runtime.local.forkclient import Zygote

__all__ = ["ZYGOTE_IDLE_SECONDS", "ForkServerPool"]

log = logging.getLogger(__name__)

#: An org's fork server with no agent of the org running is closed after this long.
ZYGOTE_IDLE_SECONDS = 120.0


class ForkServerPool:
    """The running fork server of each organization.

    Args:
        env: the variables every agent gets; each server runs with them.
        running: whether any agent of an org runs (its server is not idle while one does).
        spawn: runs a background task, named and guarded, that the runtime cancels on close.
        orphan: servers outlive the control plane, keeping their children this many seconds
            for another one to adopt (0: they die with it).
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        running: Callable[[str], bool],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
        orphan: float = 0.0,
    ) -> None:
        self._env = dict(env)
        self._orphan = orphan
        self._running = running
        self._spawn = spawn
        self._servers: dict[str, Zygote] = {}  # org → its fork server
        self._locks: dict[str, asyncio.Lock] = {}
        self._idle: dict[str, asyncio.TimerHandle] = {}
        self._starting: dict[str, int] = {}  # org → starts in flight
        self._shut = False

    def pid(self, org: str) -> int | None:
        """The pid of ``org``'s fork server while one runs."""
        server = self._servers.get(org)
        return server.pid if server is not None and server.running else None

    async def server_for(self, org: str, *, box: Box | None = None) -> Zygote | None:
        """``org``'s running fork server, started if there is none (or it died); None if it
        cannot be started, and the agent is then exec'd instead. ``box``: as root, the org's
        uid it runs as and what it keeps in view (:mod:`.forkbox`).

        Raises:
            Unavailable: the runtime is closing.
        """
        self._disarm(org)
        async with self._lock(org):
            if self._shut:
                raise Unavailable("the local runtime is closed")
            current = self._servers.get(org)
            if current is not None and current.running:
                return current
            self._servers.pop(org, None)
            if current is not None:
                await current.close()  # reaps it
                log.warning("the fork server %d of %s died; starting another", current.pid, org)
            try:
                self._servers[org] = await Zygote.start(self._env, box=box, orphan=self._orphan)
            except Unavailable as exc:
                log.warning("no fork server (%s); agents are exec'd instead", exc.message)
            return self._servers.get(org)

    @contextlib.contextmanager
    def starting(self, org: str) -> Iterator[None]:
        """Count a start of ``org`` in flight: its server is not idle while one is."""
        self._starting[org] = self._starting.get(org, 0) + 1
        try:
            yield
        finally:
            self._starting[org] -= 1
            if not self._starting[org]:
                del self._starting[org]

    def maybe_idle(self, org: str) -> None:
        """After an agent of ``org`` ended: with none left running, close its server later."""
        if org not in self._servers or self._shut or self._busy(org):
            return
        self._disarm(org)
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            if self._idle.get(org) is handle:
                del self._idle[org]
            self._spawn(self._close_idle(org), f"zygote-idle:{org}")

        handle = asyncio.get_running_loop().call_later(ZYGOTE_IDLE_SECONDS, fire)
        self._idle[org] = handle

    async def close_org(self, org: str) -> None:
        """Close ``org``'s server now (its org is being removed, or the runtime closed)."""
        self._disarm(org)
        async with self._lock(org):
            await self._end(org)

    def shut(self) -> None:
        """Start no server and arm no idle timer from now on (the runtime is closing)."""
        self._shut = True

    async def close(self) -> None:
        """Close every server; a child one still has is killed by the kernel as it goes."""
        for org in list(self._servers):
            await self.close_org(org)

    async def detach(self) -> None:
        """Leave every server running with its children, for another control plane to adopt
        (servers started with ``orphan``; the others exit and their children with them)."""
        self._shut = True
        for org in list(self._servers):
            self._disarm(org)
            server = self._servers.pop(org)
            await server.detach()

    def _busy(self, org: str) -> bool:
        return bool(self._starting.get(org)) or self._running(org)

    def _lock(self, org: str) -> asyncio.Lock:
        return self._locks.setdefault(org, asyncio.Lock())

    def _disarm(self, org: str) -> None:
        idle = self._idle.pop(org, None)
        if idle is not None:
            idle.cancel()

    async def _close_idle(self, org: str) -> None:
        async with self._lock(org):
            if self._busy(org) or org in self._idle:
                return  # an agent started (or is starting), or a later timer took over
            await self._end(org)

    async def _end(self, org: str) -> None:
        """Close ``org``'s server; the caller holds the org's lock."""
        server = self._servers.pop(org, None)
        if server is not None:
            await server.close()
