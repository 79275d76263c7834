"""The bus's health as the services read it: a probe that times out or fails is an outage, and
"lately disturbed" lasts from the last failure until the bus has answered for a while."""

from __future__ import annotations

import asyncio
import math

from corral.control.bus_health import BusHealth
from corral.domain.errors import Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_bus_never_in_trouble_is_calm_forever() -> None:
    health = BusHealth(clock=Clock())
    assert await health.check()
    assert health.healthy and not health.disturbed() and not health.disturbed(within=30)
    assert health.calm_for() == math.inf


async def test_a_probe_that_hangs_is_an_outage_until_it_answers_and_then_for_a_while() -> None:
    clock = Clock()
    hung = True

    async def probe() -> None:
        if hung:
            await asyncio.Event().wait()  # never answers

    health = BusHealth(probe, timeout=0.05, clock=clock)
    assert not await health.check()
    assert health.disturbed() and health.calm_for() == 0.0 and health.outages == 1
    assert not await health.check()
    assert health.outages == 1  # the same outage

    hung = False
    clock.now += 60
    assert await health.check()
    assert not health.disturbed()  # it answers now
    assert health.disturbed(within=10)  # but only just
    clock.now += 11
    assert not health.disturbed(within=10) and health.calm_for() == 11


async def test_a_probe_that_fails_is_an_outage() -> None:
    async def probe() -> None:
        raise Unavailable("the bus did not answer")

    health = BusHealth(probe, clock=Clock())
    assert not await health.check()
    assert not health.healthy


async def test_trouble_seen_elsewhere_counts_until_the_next_answer() -> None:
    health = BusHealth(clock=Clock())
    health.trouble("a delivery timed out")
    assert health.disturbed()
    assert await health.check()  # no probe: it answers
    assert not health.disturbed() and health.disturbed(within=1)
