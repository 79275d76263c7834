"""The bus ingress budget, enforced: an agent that pushes more into the shared server than its
org's plan allows is taken off the bus.

One nats-server serves every tenant, and NATS has no per-connection rate limit: an agent
publishing large messages as fast as it can keeps the server busy receiving, and every other
org's round trips slow down, even though its streams keep what it sends in its own quota. Each
plan therefore carries an ingress budget (``BusLimits.ingress_bytes_per_second`` and
``ingress_msgs_per_second``: what an org's agents together may publish, sustained), and
:class:`IngressWatchdog`, a background task of the platform, reads the bus's measurement of
the busiest publishers (:meth:`corral.bus.platform.PlatformBus.ingress`) a few times a second.

Bursts are allowed: :class:`Budgets` keeps a token bucket per agent and per org holding
``burst_seconds`` of the budget, refilled at the budget's rate, so an agent may exceed the rate
for a moment but not for long. An agent whose own bucket runs dry, or the busiest agent of an
org whose shared bucket runs dry, is cut off at once: its credentials are revoked (the server
closes its connections), its process stopped, and it is marked ``failed`` with the measured rate
and the budget as the reason (``corral agent show`` says why); it is logged and counted in
``corral_agents_cut_off_total``. Its tasks go the way of any lost agent's. Nothing of any other
org is touched, and an org with nothing in the server's top list costs nothing here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter

from corral.bus.ingress import IngressReading, Talker
from corral.domain.errors import CorralError
from corral.domain.plans import BusLimits
from corral.domain.tenancy import Organization

if TYPE_CHECKING:
    from corral.control.platform import Platform

__all__ = ["Breach", "Budgets", "IngressWatchdog", "watch"]

log = logging.getLogger("corral.ingress")

_MiB = 1024 * 1024
#: seconds of budget a bucket holds: how long an agent may publish above the rate
BURST_SECONDS = 3.0
#: seconds between two readings of the server's busiest publishers
INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class Breach:
    """One agent to take off: what it (or its org) sent, over how long, and the budget."""

    org: str
    agent: str
    bytes: int
    msgs: int
    seconds: float
    limits: BusLimits
    whole_org: bool = False  # the org's agents together were over, this one the busiest

    def reason(self) -> str:
        rate = self.bytes / self.seconds / _MiB
        msgs = self.msgs / self.seconds
        who = "its organization's agents together" if self.whole_org else "it"
        return (
            f"taken off the bus: {who} published {rate:.1f} MiB/s and {msgs:,.0f} messages/s "
            f"(over {self.seconds:.1f} s), over the plan's ingress budget of "
            f"{self.limits.ingress_bytes_per_second / _MiB:g} MiB/s and "
            f"{self.limits.ingress_msgs_per_second:,} messages/s"
        )


class _Bucket:
    """Bytes and messages left to send; both refill at the budget's rate up to a cap."""

    __slots__ = ("bytes", "msgs", "sent", "sent_msgs", "seconds")

    def __init__(self, limits: BusLimits, burst: float) -> None:
        self.bytes = limits.ingress_bytes_per_second * burst
        self.msgs = limits.ingress_msgs_per_second * burst
        self.sent = self.sent_msgs = 0
        self.seconds = 0.0

    def charge(self, limits: BusLimits, burst: float, seconds: float, b: int, m: int) -> bool:
        """Refill for ``seconds``, take ``b`` bytes and ``m`` messages; False once dry."""
        rate, msg_rate = limits.ingress_bytes_per_second, limits.ingress_msgs_per_second
        self.bytes = min(self.bytes + rate * seconds - b, rate * burst)
        self.msgs = min(self.msgs + msg_rate * seconds - m, msg_rate * burst)
        # what was sent since the bucket was last full: the figures a reason gives
        self.sent += b
        self.sent_msgs += m
        self.seconds += seconds
        if self.full(limits, burst):
            self.sent = self.sent_msgs = 0
            self.seconds = 0.0
        return self.bytes >= 0 and self.msgs >= 0

    def full(self, limits: BusLimits, burst: float) -> bool:
        return (
            self.bytes >= limits.ingress_bytes_per_second * burst
            and self.msgs >= limits.ingress_msgs_per_second * burst
        )


class Budgets:
    """Token buckets per agent and per org over successive readings (no I/O: unit-tested).

    Args:
        limits: an org's bus limits (``None``: not known to the bus; ignored).
        burst_seconds: how much of the budget a bucket holds.
    """

    def __init__(
        self, limits: Callable[[str], BusLimits | None], *, burst_seconds: float = BURST_SECONDS
    ) -> None:
        self._limits = limits
        self.burst = burst_seconds
        self._agents: dict[tuple[str, str], _Bucket] = {}
        self._orgs: dict[str, _Bucket] = {}

    def tracked(self) -> int:
        """Buckets held: only for agents and orgs that sent recently (tests, metrics)."""
        return len(self._agents) + len(self._orgs)

    def charge(self, reading: IngressReading) -> list[Breach]:
        """Fold one reading in; the agents to take off, the busiest first."""
        seconds = reading.seconds
        breaches: list[Breach] = []
        talking: dict[str, list[Talker]] = {}
        for t in reading.talkers:
            talking.setdefault(t.org, []).append(t)
        for org, talkers in talking.items():
            limits = self._limits(org)
            if limits is None:
                continue
            out = self._charge_org(org, talkers, limits, seconds)
            breaches.extend(out)
        self._refill_idle(talking, seconds)
        breaches.sort(key=lambda b: b.bytes, reverse=True)
        return breaches

    def _charge_org(
        self, org: str, talkers: list[Talker], limits: BusLimits, seconds: float
    ) -> list[Breach]:
        out: list[Breach] = []
        kept: list[Talker] = []
        for t in talkers:
            bucket = self._agents.setdefault((org, t.agent), _Bucket(limits, self.burst))
            if bucket.charge(limits, self.burst, seconds, t.bytes, t.msgs):
                kept.append(t)
                continue
            del self._agents[(org, t.agent)]
            out.append(Breach(org, t.agent, bucket.sent, bucket.sent_msgs, bucket.seconds, limits))
        whole = self._orgs.setdefault(org, _Bucket(limits, self.burst))
        sent = sum(t.bytes for t in kept)
        msgs = sum(t.msgs for t in kept)  # those taken off are not the org's to pay for again
        if whole.charge(limits, self.burst, seconds, sent, msgs):
            return out
        # the org together is over: its busiest agents go until it is within its budget
        for t in sorted(kept, key=lambda t: (t.bytes, t.msgs), reverse=True):
            out.append(
                Breach(org, t.agent, whole.sent, whole.sent_msgs, whole.seconds, limits, True)
            )
            self._agents.pop((org, t.agent), None)
            whole.bytes += t.bytes
            whole.msgs += t.msgs
            if whole.bytes >= 0 and whole.msgs >= 0:
                break
        return out

    def _refill_idle(self, talking: dict[str, list[Talker]], seconds: float) -> None:
        """Buckets of agents and orgs that sent nothing refill, and are dropped once full."""
        heard = {(t.org, t.agent) for ts in talking.values() for t in ts}
        for key in [k for k in self._agents if k not in heard]:
            if self._settled(self._agents[key], key[0], seconds):
                del self._agents[key]
        for org in [o for o in self._orgs if o not in talking]:
            if self._settled(self._orgs[org], org, seconds):
                del self._orgs[org]

    def _settled(self, bucket: _Bucket, org: str, seconds: float) -> bool:
        limits = self._limits(org)
        if limits is None:
            return True  # the org is gone
        bucket.charge(limits, self.burst, seconds, 0, 0)
        return bucket.full(limits, self.burst)


class IngressSource(Protocol):
    """What the watchdog needs of the bus (the PlatformBus)."""

    async def ingress(self) -> IngressReading: ...

    async def revoke_agent(self, org: str, agent: str) -> None: ...


class TakeOff(Protocol):
    """What the watchdog needs of the controller."""

    async def take_off(self, org: Organization, agent_id: str, *, reason: str) -> bool: ...


class IngressWatchdog:
    """Reads the bus's ingress every ``interval`` seconds and takes off agents over budget.

    Args:
        bus: measures the busiest publishers and revokes an agent's credentials.
        controller: stops the agent and records why.
        org: an organization by its slug.
        limits: an org's bus limits, by slug (the bus authority's, kept in memory).
        registry: where ``corral_agents_cut_off_total`` is counted.
    """

    def __init__(
        self,
        *,
        bus: IngressSource,
        controller: TakeOff,
        org: Callable[[str], Awaitable[Organization]],
        limits: Callable[[str], BusLimits | None],
        registry: CollectorRegistry,
        interval: float = INTERVAL,
        burst_seconds: float = BURST_SECONDS,
    ) -> None:
        self.bus = bus
        self.controller = controller
        self.interval = interval
        self.budgets = Budgets(limits, burst_seconds=burst_seconds)
        self._org = org
        self._recent: dict[tuple[str, str], float] = {}  # taken off: not twice in a row
        self.cut_off = Counter(
            "corral_agents_cut_off",
            "Agents taken off the bus for publishing over their plan's ingress budget",
            ["org"],
            registry=registry,
        )

    async def run(self) -> None:
        """Until cancelled; a reading that fails (the server is away) is skipped."""
        failing = False
        while True:
            try:
                reading = await self.bus.ingress()
            except CorralError as exc:
                if not failing:
                    log.warning("cannot read the bus's ingress: %s", exc.message)
                failing = True
            else:
                failing = False
                for breach in self.budgets.charge(reading):
                    await self.take_off(breach)
            await asyncio.sleep(self.interval)

    async def take_off(self, breach: Breach) -> None:
        """Off the bus first (its credentials revoked: the server closes its connections
        now), then the process stopped and the record ``failed`` with the reason."""
        key = (breach.org, breach.agent)
        now = time.monotonic()
        if now - self._recent.get(key, -60.0) < 10.0:
            return  # its last bytes, read after it was already taken off
        self._recent = {k: t for k, t in self._recent.items() if now - t < 10.0}
        self._recent[key] = now
        reason = breach.reason()
        try:
            await self.bus.revoke_agent(breach.org, breach.agent)
            org = await self._org(breach.org)
            done = await self.controller.take_off(org, breach.agent, reason=reason)
        except CorralError as exc:
            log.error("could not take %s of %s off the bus: %s", breach.agent, breach.org, exc)
            return
        if done:
            self.cut_off.labels(breach.org).inc()
            log.warning(
                "agent %s of %s %s",
                breach.agent,
                breach.org,
                reason,
                extra={"org": breach.org, "agent": breach.agent},
            )


async def watch(p: Platform) -> None:
    """The platform's watchdog over its bus, run until cancelled."""
    watchdog = IngressWatchdog(
        bus=p.bus,
        controller=p.controller,
        org=p.orgs.get,
        limits=p.bus.authority.limits,
        registry=p.metrics.registry,
    )
    await watchdog.run()
