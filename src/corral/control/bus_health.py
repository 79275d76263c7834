"""Whether the bus answers: a round trip through the server every second.

A bus that stops answering (a hung or restarting nats-server) silences every agent at once.
That is not the agents' fault, so while the bus is disturbed, and for a while after it answers
again, the services judge nobody by it: the reaper does not take an agent's silence for a hang,
a restart that fails on the bus is tried again instead of failing the agent, an exit is not
counted as the agent's crash, and a delivery that failed is not counted as the task's attempt.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from corral.domain.errors import CorralError

__all__ = ["BusHealth"]

log = logging.getLogger("corral.bus_health")

Probe = Callable[[], Awaitable[None]]


class BusHealth:
    """Run :meth:`watch` in the background; ask :meth:`disturbed` and :meth:`calm_for`.

    Without a probe (unit tests with a fake bus) the bus is always healthy unless told
    otherwise through :meth:`trouble`.
    """

    def __init__(
        self,
        probe: Probe | None = None,
        *,
        every: float = 1.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self.every = every
        self.timeout = timeout
        self._clock = clock
        self.healthy = True
        self.outages = 0  # how many times the bus stopped answering
        self._troubled_at: float | None = None  # the last moment the bus was seen in trouble

    def calm_for(self) -> float:
        """Seconds since the bus was last seen in trouble (``inf``: never; 0: now)."""
        if not self.healthy:
            return 0.0
        if self._troubled_at is None:
            return math.inf
        return max(0.0, self._clock() - self._troubled_at)

    def disturbed(self, within: float = 0.0) -> bool:
        """The bus is in trouble now, or was less than ``within`` seconds ago."""
        return self.calm_for() <= within if within > 0 else not self.healthy

    def trouble(self, why: str) -> None:
        """Someone saw the bus fail to answer (a delivery timed out, say)."""
        if self.healthy:
            self.outages += 1
            log.warning("the bus is not answering: %s", why)
        self.healthy = False
        self._troubled_at = self._clock()

    def answered(self) -> None:
        if not self.healthy:
            log.warning("the bus answers again")
            self._troubled_at = self._clock()
        self.healthy = True

    async def check(self) -> bool:
        """One round trip; True if the bus answered in time."""
        if self._probe is None:
            self.answered()
            return True
        try:
            async with asyncio.timeout(self.timeout):
                await self._probe()
        except (TimeoutError, CorralError) as exc:
            self.trouble(str(exc) or f"no answer within {self.timeout:g}s")
            return False
        self.answered()
        return True

    async def watch(self) -> None:
        """Probe the bus every ``every`` seconds, forever."""
        while True:
            started = self._clock()
            await self.check()
            await asyncio.sleep(max(0.0, self.every - (self._clock() - started)))
