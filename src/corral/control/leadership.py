"""Leadership of replicated control planes: campaign for the lease, lead with a whole
:class:`~corral.control.platform.Platform`, step down when the lease is lost, stand by again.

A replica is a standby until :class:`~corral.store.leases.LeaderLease` elects it. Then it
starts the platform under that lease — which rebuilds every in-memory structure from the store
and the EVENTS backlog, exactly as a restarted control plane does — and holds the lease until
one of two things says it is lost: its own renewals (not renewed within ``lease_seconds``, or
the epoch moved on) or a journal commit refused by the epoch. Then the platform is torn down
(dispatcher and in-memory state gone; every write already fenced, so nothing more is
committed) and the replica campaigns again.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from corral.control.platform import Platform
from corral.control.recovery import warm_up
from corral.domain.errors import InvalidInput, Unavailable
from corral.settings import Settings
from corral.store.db import Database
from corral.store.leases import Leader, LeaderLease

__all__ = ["Leader", "Leadership", "check_replicable"]

log = logging.getLogger("corral.leadership")

Term = Callable[[Platform], AbstractAsyncContextManager[None]]


def check_replicable(settings: Settings) -> None:
    """Replicas need a store and a bus they all share.

    Raises:
        InvalidInput: SQLite, or no external NATS.
    """
    if not settings.resolved_database_url.startswith(("postgresql", "postgres")):
        raise InvalidInput(
            "CORRAL_HA needs PostgreSQL (CORRAL_DATABASE_URL=postgresql://...): on SQLite one "
            "control plane runs per database, under its writer lock"
        )
    if not settings.nats_url:
        raise InvalidInput(
            "CORRAL_HA needs the NATS every replica shares (CORRAL_NATS_URL): an embedded "
            "nats-server would die with its replica"
        )


class Leadership:
    """One replica's leadership: ``await run(term)`` until cancelled.

    Args:
        settings: the replica's settings (``lease_seconds`` among them).
        replica: its name, unique among the replicas.
        api_url: where the others reach its API, recorded with the lease.
    """

    def __init__(self, settings: Settings, *, replica: str, api_url: str) -> None:
        check_replicable(settings)
        self.settings = settings
        self.lease = LeaderLease(
            settings.resolved_database_url,
            replica=replica,
            api_url=api_url,
            lease_seconds=settings.lease_seconds,
        )
        self.platform: Platform | None = None  # while leading
        self.terms = 0  # how many times this replica was elected
        self.last_step_down: str | None = None

    @property
    def replica(self) -> str:
        return self.lease.replica

    async def leader(self) -> Leader | None:
        """Who leads, as the lease row says (``None``: nobody has yet, or the store is away)."""
        try:
            return await self.lease.leader()
        except Unavailable:
            return None

    async def run(self, term: Term) -> None:
        """Campaign, lead (``term(platform)`` is entered for each term, e.g. to serve the
        platform's API), step down, again, until cancelled."""
        await self._migrate()
        warm_up(self.settings)  # in the loop's thread: it starts probe processes
        if self.settings.runtime == "local":  # imported when leading: now, beside the loop
            await asyncio.to_thread(importlib.import_module, "corral.runtime.local")
        while True:
            await self.lease.campaign()
            try:
                await self._lead(term)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self.last_step_down is None:
                    log.exception("leading failed; standing by again")
                else:  # what the teardown met once the lease was gone (sessions ended)
                    log.info("the deposed platform's teardown ended with an error", exc_info=True)
            finally:
                self.platform = None
                await self.lease.close()  # the session, its advisory lock and the epoch go
            await asyncio.sleep(self.lease.poll_seconds)

    async def _migrate(self) -> None:
        """Bring the schema to this release's before campaigning (the lease is in it), waiting
        out a database that is away."""
        while True:
            db = Database(self.settings.resolved_database_url)
            try:
                await db.start()
                return
            except Unavailable as exc:
                log.warning("standing by for the database: %s", exc.message)
            finally:
                await db.close()
            await asyncio.sleep(1.0)

    async def _lead(self, term: Term) -> None:
        self.terms += 1
        self.last_step_down = None
        # renewed from the moment of election: starting the platform may take longer than
        # the lease
        holding = asyncio.ensure_future(self.lease.hold())
        try:
            async with Platform(self.settings, lease=self.lease) as platform:
                self.platform = platform
                try:
                    async with term(platform):
                        why = await _first(holding, _deposed(platform))
                        self.last_step_down = why
                        platform.keep_agents = True  # the next leader adopts them
                        log.error("replica %s steps down: %s", self.replica, why)
                finally:
                    self.platform = None
                    self.lease.lose()  # no write of the platform's teardown reaches the store
        finally:
            holding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holding


async def _deposed(platform: Platform) -> str:
    await platform.deposed.wait()
    return "another replica's epoch refused this one's writes"


async def _first(*waits: Awaitable[str]) -> str:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
