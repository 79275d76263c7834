"""One lookup for many callers: concurrent misses of one key share a single lookup, its error
too, and a caller that goes away leaves it running for the others."""

from __future__ import annotations

import asyncio

import pytest

from corral.control.gateway.flights import Flights
from corral.domain.errors import Unauthenticated


async def test_concurrent_callers_of_one_key_share_one_lookup() -> None:
    flights: Flights[str, int] = Flights("test")
    gate = asyncio.Event()
    lookups = 0

    async def lookup() -> int:
        nonlocal lookups
        lookups += 1
        await gate.wait()
        return 42

    callers = [asyncio.create_task(flights.run("k", lookup)) for _ in range(200)]
    other = asyncio.create_task(flights.run("other", lookup))
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*callers) == [42] * 200
    assert await other == 42
    assert lookups == 2
    assert await flights.run("k", lookup) == 42  # landed: the next miss looks up again
    assert lookups == 3


async def test_an_error_is_every_callers_and_a_cancelled_caller_leaves_the_lookup() -> None:
    flights: Flights[str, int] = Flights("test")
    gate = asyncio.Event()

    async def refused() -> int:
        await gate.wait()
        raise Unauthenticated("unknown or revoked gateway credential")

    gone = asyncio.create_task(flights.run("k", refused))
    stays = asyncio.create_task(flights.run("k", refused))
    await asyncio.sleep(0)
    gone.cancel()
    gate.set()
    with pytest.raises(Unauthenticated):
        await stays
    with pytest.raises(asyncio.CancelledError):
        await gone
