"""The console's per-minute figures: bounded, a minute at a time, carried across quiet
minutes; and the event hub's ids and replay for streams that reconnect."""

from __future__ import annotations

import pytest

from corral.control import series as series_module
from corral.control.hub import REPLAY, EventHub
from corral.control.series import MINUTES, TaskSeries


class Clock:
    def __init__(self, now: float = 600_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_hour_has_one_bucket_a_minute_with_what_ended_and_how_long_it_took() -> None:
    clock = Clock()
    s = TaskSeries(clock=clock)
    s.depth("acme", 4)
    s.ended("acme", 2.0)
    s.ended("acme", 4.0)
    clock.now += 120  # two minutes later, quiet in between
    s.depth("acme", 1)
    hour = s.last_hour("acme")
    assert len(hour) == MINUTES
    assert [m.start for m in hour] == sorted(m.start for m in hour)
    then, between, now = hour[-3], hour[-2], hour[-1]
    assert (then.depth, then.ended, then.mean_latency) == (4, 2, 3.0)
    assert (between.depth, between.ended, between.mean_latency) == (4, 0, None)  # carried
    assert (now.depth, now.ended) == (4, 0)  # the deepest this minute started with
    assert now.last == 1
    assert s.last_hour("globex") == [m for m in s.last_hour("globex") if m.depth == 0]


def test_what_is_older_than_an_hour_is_gone_and_orgs_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    s = TaskSeries(clock=clock)
    s.ended("acme", 1.0)
    clock.now += MINUTES * 60
    assert sum(m.ended for m in s.last_hour("acme")) == 0
    monkeypatch.setattr(series_module, "MAX_ORGS", 3)
    for org in ("a", "b", "c", "d"):
        s.ended(org, 1.0)
    assert sum(m.ended for m in s.last_hour("a")) == 0  # the least recent was forgotten
    assert sum(m.ended for m in s.last_hour("d")) == 1


async def test_a_stream_that_reconnects_gets_the_events_after_its_last_id_of_its_org() -> None:
    hub = EventHub()
    hub.publish("acme", "task", {"n": 1})
    hub.publish("globex", "task", {"n": 2})
    hub.publish("acme", "task", {"n": 3})
    async with hub.subscribe("acme", after=1) as q:
        got = [q.get_nowait() for _ in range(q.qsize())]
    assert [(e["id"], e["n"]) for e in got] == [(3, 3)]
    async with hub.subscribe(None, after=0) as q:
        assert [q.get_nowait()["id"] for _ in range(q.qsize())] == [1, 2, 3]
    assert hub.last_id == 3


async def test_the_hub_keeps_a_bounded_number_of_events_and_listens_a_while_after() -> None:
    hub = EventHub()
    assert not hub.wants("acme")
    for i in range(REPLAY + 10):
        hub.publish("acme", "task", {"n": i})
    assert len(hub.recent("acme")) == REPLAY
    async with hub.subscribe("acme"):
        assert hub.wants("acme")
    assert hub.wants("acme")  # a page reconnecting finds what was published meanwhile
    assert not hub.wants("globex")
