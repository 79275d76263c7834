"""The ingress budget: short bursts pass, a sustained excess takes the agent off, an org's
agents together are held to the org's budget, and nothing is kept for those who sent nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

from prometheus_client import CollectorRegistry

from corral.bus.ingress import IngressReading, Talker
from corral.control.ingress import Breach, Budgets, IngressWatchdog
from corral.domain.errors import Unavailable
from corral.domain.plans import STANDARD, BusLimits

MiB = 1024 * 1024
#: 1 MiB/s and 1,000 messages/s for the whole org
LIMITS = dataclasses.replace(
    STANDARD.bus, ingress_bytes_per_second=MiB, ingress_msgs_per_second=1000
)


def budgets(burst: float = 3.0) -> Budgets:
    known: dict[str, BusLimits] = {"a": LIMITS, "b": LIMITS}
    return Budgets(known.get, burst_seconds=burst)


def reading(seconds: float, *talkers: tuple[str, str, int, int]) -> IngressReading:
    return IngressReading(seconds, [Talker(*t) for t in talkers])


def test_an_agent_within_its_budget_is_never_taken_off() -> None:
    b = budgets()
    for _ in range(100):  # 50 s at just under the rate
        assert b.charge(reading(0.5, ("a", "a1", MiB // 2 - 1, 499))) == []


def test_a_short_burst_above_the_rate_is_allowed() -> None:
    b = budgets(burst=3.0)
    assert b.charge(reading(0.5, ("a", "a1", 3 * MiB, 10))) == []  # 6× the rate, for 0.5 s
    for _ in range(10):  # then quiet again
        assert b.charge(reading(0.5, ("a", "a1", 1024, 1))) == []


def test_a_sustained_excess_takes_the_agent_off_with_what_it_sent() -> None:
    b = budgets(burst=3.0)
    out: list[Breach] = []
    rounds = 0
    while not out:
        out = b.charge(reading(0.5, ("a", "a1", 2 * MiB, 10)))  # 4× the rate
        rounds += 1
        assert rounds < 20
    assert rounds == 3  # 1.5 MiB over the rate a reading: 3 s of budget gone on the third
    [breach] = out
    assert (breach.org, breach.agent, breach.whole_org) == ("a", "a1", False)
    assert breach.bytes == 6 * MiB and breach.seconds == 1.5
    assert "4.0 MiB/s" in breach.reason() and "1 MiB/s" in breach.reason()


def test_a_flood_of_tiny_messages_is_over_the_message_budget() -> None:
    b = budgets(burst=1.0)
    [breach] = b.charge(reading(0.5, ("a", "a1", 100_000, 5_000)))
    assert breach.msgs == 5_000 and "10,000 messages/s" in breach.reason()


def test_agents_each_within_but_together_over_lose_the_busiest() -> None:
    b = budgets(burst=1.0)
    out: list[Breach] = []
    rounds = 0
    while not out:  # 0.6 and 0.9 MiB/s: each within 1 MiB/s, together 1.5 MiB/s
        out = b.charge(reading(0.5, ("a", "a1", 3 * MiB // 10, 10), ("a", "a2", 9 * MiB // 20, 10)))
        rounds += 1
        assert rounds < 10
    assert rounds == 5  # a deficit of 0.25 MiB a reading empties 1 s of budget on the fifth
    assert [(x.agent, x.whole_org) for x in out] == [("a2", True)]
    assert "agents together" in out[0].reason()
    # with a2 gone, a1 alone is within the budget again
    for _ in range(10):
        assert b.charge(reading(0.5, ("a", "a1", 3 * MiB // 10, 10))) == []


def test_one_orgs_flood_takes_off_nobody_else() -> None:
    b = budgets(burst=1.0)
    out = b.charge(reading(0.5, ("a", "a1", 50 * MiB, 50), ("b", "b1", MiB // 4, 10)))
    assert [(x.org, x.agent) for x in out] == [("a", "a1")]


def test_nothing_is_kept_for_agents_and_orgs_once_they_are_quiet() -> None:
    b = budgets(burst=1.0)
    b.charge(reading(0.5, ("a", "a1", MiB // 4, 10), ("b", "b1", 1, 1)))
    assert b.tracked() == 4
    for _ in range(4):
        b.charge(reading(0.5))
    assert b.tracked() == 0


def test_an_org_the_bus_does_not_know_is_ignored() -> None:
    b = budgets()
    assert b.charge(reading(0.5, ("gone", "g1", 500 * MiB, 10))) == []
    assert b.tracked() == 0


class FakeBus:
    def __init__(self, readings: list[IngressReading | Exception]) -> None:
        self.readings = readings
        self.revoked: list[tuple[str, str]] = []

    async def ingress(self) -> IngressReading:
        item = self.readings.pop(0) if self.readings else IngressReading(0.5)
        if isinstance(item, Exception):
            raise item
        return item

    async def revoke_agent(self, org: str, agent: str) -> None:
        self.revoked.append((org, agent))


class FakeController:
    def __init__(self) -> None:
        self.taken: list[tuple[str, str, str]] = []

    async def take_off(self, org: Any, agent_id: str, *, reason: str) -> bool:
        self.taken.append((org, agent_id, reason))
        return True


async def test_the_watchdog_revokes_then_takes_off_once_and_counts_it() -> None:
    flood = reading(0.5, ("a", "a1", 100 * MiB, 100))
    bus = FakeBus([Unavailable("server away"), flood, flood])
    controller = FakeController()
    registry = CollectorRegistry()

    async def org(slug: str) -> Any:
        return slug

    watchdog = IngressWatchdog(
        bus=bus,
        controller=controller,
        org=org,
        limits={"a": LIMITS}.get,
        registry=registry,
        burst_seconds=1.0,
    )
    for _ in range(3):  # one failed reading, then the flood, then its last bytes
        try:
            r = await bus.ingress()
        except Unavailable:
            continue
        for breach in watchdog.budgets.charge(r):
            await watchdog.take_off(breach)
    assert bus.revoked == [("a", "a1")]
    assert [(o, a) for o, a, _ in controller.taken] == [("a", "a1")]
    assert "taken off the bus" in controller.taken[0][2]
    assert registry.get_sample_value("corral_agents_cut_off_total", {"org": "a"}) == 1.0
