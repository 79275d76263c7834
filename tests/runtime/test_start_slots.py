"""One organization starting many agents holds at most a few of the runtime's start slots, so
another organization's agent never waits behind all of them."""

from __future__ import annotations

import asyncio

from corral.runtime.local.launching import KeySlots
from tests.support import eventually


async def test_a_key_holds_at_most_its_limit_and_others_pass() -> None:
    slots = KeySlots(2)
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}
    release = asyncio.Event()

    async def start(key: str) -> None:
        async with slots.slot(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            await release.wait()
            inside[key] -= 1

    starts = [asyncio.create_task(start("a")) for _ in range(10)]
    await eventually(lambda: inside["a"] == 2, message="two of org a's starts inside")
    other = asyncio.create_task(start("b"))
    await eventually(lambda: inside["b"] == 1, message="org b passes org a's queue")
    assert inside["a"] == 2 and slots.holders("a") == 10
    release.set()
    await asyncio.gather(*starts, other)
    assert most == {"a": 2, "b": 1}
    assert slots.holders("a") == 0 and slots._held == {}  # nothing kept per idle org
