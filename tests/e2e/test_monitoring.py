"""Monitoring across tenants: the admin sees every org, labelled; an org sees only itself —
in its usage figures and in its event stream — with real agents at work."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.control import monitoring
from tests.e2e.conftest import Live
from tests.support import eventually


def _samples(text: str) -> dict[str, list[dict[str, str]]]:
    """Metric sample name → the label sets it was exported with (the value under ``=``)."""
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append({**sample.labels, "=": str(sample.value)})
    return out


@dataclass
class Stream:
    """What one server-sent event stream delivered, read in the background."""

    events: list[dict[str, Any]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


@contextlib.asynccontextmanager
async def streaming(client: httpx.AsyncClient, path: str) -> AsyncIterator[Stream]:
    stream = Stream()

    async def read() -> None:
        async with client.stream("GET", path, timeout=None) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if line == ": connected":
                    stream.connected.set()
                elif line.startswith("data: "):
                    stream.events.append(json.loads(line.removeprefix("data: ")))

    reader = asyncio.create_task(read(), name="sse-reader")
    try:
        await eventually(
            lambda: stream.connected.is_set() or reader.done(), message=f"{path} connected"
        )
        if reader.done():
            reader.result()  # raises what went wrong
        yield stream
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


@dataclass
class Pair:
    """Org ``acme`` (standard) and ``globex`` (enterprise), each with its key and one agent."""

    acme: httpx.AsyncClient
    globex: httpx.AsyncClient
    a_id: str
    b_id: str


@pytest.fixture
async def pair(live: Live) -> AsyncIterator[Pair]:
    _, acme = await live.org("acme", plan="standard")
    _, globex = await live.org("globex", plan="enterprise")
    async with acme, globex:
        a = await live.agent("acme", "worker")
        b = await live.agent("globex", "worker")
        yield Pair(acme, globex, a["id"], b["id"])


async def test_metrics_carry_org_and_tier_labels_for_every_org_and_need_the_admin_key(
    live: Live, pair: Pair
) -> None:
    acme, globex, a_id, b_id = pair.acme, pair.globex, pair.a_id, pair.b_id
    t = await live.task("acme", agent=a_id, payload={"op": "echo"})
    await live.wait_task("acme", t["id"])

    r = await live.admin.get("/metrics")
    assert r.status_code == 200, r.text
    samples = _samples(r.text)
    running = {"state": "running", "=": "1.0"}
    assert {"org": "acme", "tier": "standard", **running} in samples["corral_agents"]
    assert {"org": "globex", "tier": "enterprise", **running} in samples["corral_agents"]
    # the seed's two questions: running agents per org, and CPU used over CPU requested by tier
    for name in (
        "corral_agents",
        "corral_agent_cpu_seconds_total",
        "corral_agent_resource_requests",
    ):
        labelled = {(s["org"], s["tier"]) for s in samples.get(name, [])}
        assert {("acme", "standard"), ("globex", "enterprise")} <= labelled, name
    cpu_requests = [s for s in samples["corral_agent_resource_requests"] if s["resource"] == "cpu"]
    assert {s["agent"] for s in cpu_requests} >= {a_id, b_id}
    assert {"org", "tier", "priority", "state"} <= set(samples["corral_tasks"][0])

    for key in (acme, globex):
        denied = await key.get("/metrics")
        assert denied.status_code in (401, 403), denied.text
        assert "corral_agents" not in denied.text
    async with httpx.AsyncClient(base_url=live.server.url) as nobody:
        assert (await nobody.get("/metrics")).status_code == 401


async def test_an_orgs_usage_shows_nothing_of_another_org(live: Live, pair: Pair) -> None:
    acme, globex, b_id = pair.acme, pair.globex, pair.b_id
    busy = await live.task("globex", agent=b_id, payload={"op": "sleep", "seconds": 1})
    await live.wait_task("globex", busy["id"])

    r = await acme.get("/v1/orgs/acme/usage")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["org"] == "acme" and body["agents"] == {"running": 1}
    assert body["quota"]["pods"]["used"] == "1"
    for foreign in ("globex", b_id, busy["id"]):
        assert foreign not in r.text
    assert "tasks" in body and sum(body["tasks"].values()) == 0  # globex's task not counted

    other = await acme.get("/v1/orgs/globex/usage")
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "not_found"
    assert (await globex.get("/v1/orgs/acme/usage")).status_code == 404


async def test_an_orgs_event_stream_carries_its_own_work_and_never_another_orgs(
    live: Live, pair: Pair
) -> None:
    acme, a_id, b_id = pair.acme, pair.a_id, pair.b_id
    async with (
        streaming(acme, "/v1/orgs/acme/events") as mine,
        streaming(live.admin, "/v1/events") as everything,
    ):
        theirs = await live.task("globex", agent=b_id, payload={"op": "sleep", "seconds": 1})
        ours = await live.task("acme", agent=a_id, payload={"op": "sleep", "seconds": 1})
        await live.wait_task("acme", ours["id"])
        await live.wait_task("globex", theirs["id"])

        def states(stream: Stream, task_id: str) -> list[str]:
            return [e["task"]["state"] for e in stream.of("task") if e["task"]["id"] == task_id]

        await eventually(
            lambda: "completed" in states(mine, ours["id"]), message="acme's completion streamed"
        )
        await eventually(
            lambda: "completed" in states(everything, theirs["id"]),
            message="globex's completion at the admin",
        )

    ours_seen = states(mine, ours["id"])
    assert {"dispatched", "running", "completed"} <= set(ours_seen), ours_seen
    progress = [e["progress"] for e in mine.of("progress") if e["task"] == ours["id"]]
    assert len(progress) >= 5 and progress == sorted(progress) and progress[-1] == 1.0
    assert {e["org"] for e in mine.events} == {"acme"}
    raw = json.dumps(mine.events)
    for foreign in ("globex", b_id, theirs["id"]):
        assert foreign not in raw

    assert {e["org"] for e in everything.events} == {"acme", "globex"}
    assert any(e["task"] == theirs["id"] for e in everything.of("progress"))


async def test_an_org_key_cannot_stream_another_org_or_everything(pair: Pair) -> None:
    acme, globex = pair.acme, pair.globex
    r = await acme.get("/v1/orgs/globex/events")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await acme.get("/v1/events")
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    r = await globex.get("/v1/events")
    assert r.status_code == 403


async def test_every_dispatch_is_counted_even_when_metrics_are_scraped_once(live: Live) -> None:
    await live.org("acme")
    await live.agent("acme", "w", role="worker", slots=8)
    ids = [
        (await live.task("acme", role="worker", payload={"op": "echo"}))["id"] for _ in range(40)
    ]
    for task_id in ids:
        await live.wait_task("acme", task_id)
    text = (await live.admin.get("/metrics")).text
    count = _samples(text)["corral_dispatch_latency_seconds_count"]
    assert float(count[0]["="]) == 40.0, count


async def test_an_org_cannot_open_event_streams_without_bound(live: Live) -> None:
    from corral.api.routes.events import MAX_STREAMS_PER_ORG

    _, acme = await live.org("acme")
    _, other = await live.org("other")
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(MAX_STREAMS_PER_ORG):
            await stack.enter_async_context(streaming(acme, "/v1/orgs/acme/events"))
        over = await acme.get("/v1/orgs/acme/events")
        assert over.status_code == 429, over.text
        assert "Retry-After" in over.headers
        async with streaming(other, "/v1/orgs/other/events"):  # another org is not held
            pass
    hub = live.platform.hub
    await eventually(lambda: hub.streams("acme") == 0, message="closed streams let go")
    async with streaming(acme, "/v1/orgs/acme/events"):  # closed ones free their places
        pass


async def test_metrics_give_idle_orgs_no_series_of_their_own_unless_asked(live: Live) -> None:
    await live.org("busy")
    for n in range(3):
        await live.org(f"idle{n}", plan="free")
    await live.agent("busy", "w")

    samples = _samples((await live.admin.get("/metrics")).text)
    assert {s["org"] for s in samples["corral_quota_used"]} == {"busy"}
    assert {s["org"] for s in samples["corral_queue_depth"]} == {"busy"}
    orgs = {s["tier"]: s["="] for s in samples["corral_orgs"]}
    assert orgs == {"free": "3.0", "standard": "1.0"}

    every = _samples((await live.admin.get("/metrics", params={"orgs": "all"})).text)
    assert {s["org"] for s in every["corral_quota_used"]} == {"busy", "idle0", "idle1", "idle2"}
    assert (await live.admin.get("/metrics", params={"orgs": "some"})).status_code == 422


async def test_scrapes_in_quick_succession_measure_the_agents_once_and_count_tasks_each_time(
    live: Live, pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitoring, "MEASURED_FOR", 3600.0)  # however slow the machine is
    runtime = live.platform.runtime
    measured: list[int] = []
    real = runtime.usage_many

    async def counting(asked: Any, **kw: Any) -> Any:
        measured.append(len(asked))
        return await real(asked, **kw)

    runtime.usage_many = counting
    try:
        for _ in range(5):  # a client polling /metrics: the process table is read once
            assert (await live.admin.get("/metrics")).status_code == 200
        assert measured == [2]
        t = await live.task("acme", agent=pair.a_id, payload={"op": "echo"})
        await live.wait_task("acme", t["id"])
        samples = _samples((await live.admin.get("/metrics")).text)
        done = [s for s in samples["corral_tasks"] if s["org"] == "acme"]
        assert any(s["state"] == "completed" and s["="] == "1.0" for s in done)  # counted now
        third = await live.agent("acme", "second")  # a new agent is measured at once
        rows = _samples((await live.admin.get("/metrics")).text)["corral_agent_cpu_seconds_total"]
        assert third["id"] in {s["agent"] for s in rows}
        assert measured[-1] == 3
    finally:
        runtime.usage_many = real


async def test_a_scrape_naming_series_gets_those_alone_and_measures_nothing_else(
    live: Live, pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``?name[]=…`` as Prometheus' own exposition takes it: the series named, the same as a
    whole scrape gives them; nothing else is measured (no agent read, no process table, no
    quota use), and the platform's last whole snapshot is not replaced by a partial one."""
    t = await live.task("acme", agent=pair.a_id, payload={"op": "echo"})
    await live.wait_task("acme", t["id"])
    whole = _samples((await live.admin.get("/metrics")).text)
    kept = live.platform.metrics.snapshot

    async def refused(*args: Any, **kw: Any) -> Any:
        raise AssertionError("measured for a scrape that did not ask for it")

    monkeypatch.setattr(live.platform.runtime, "usage_many", refused)
    monkeypatch.setattr(live.platform.agents, "count_by_state", refused)
    monkeypatch.setattr(live.platform.dispatcher.snapshot, "usage", refused)
    r = await live.admin.get(
        "/metrics",
        params=[("name[]", "corral_tasks"), ("name[]", "corral_dispatch_latency_seconds_count")],
    )
    assert r.status_code == 200, r.text
    some = _samples(r.text)
    assert set(some) == {"corral_tasks", "corral_dispatch_latency_seconds_count"}
    assert some["corral_tasks"] == whole["corral_tasks"]
    assert (
        some["corral_dispatch_latency_seconds_count"]
        == (whole["corral_dispatch_latency_seconds_count"])
    )
    assert live.platform.metrics.snapshot is kept
    too_long = await live.admin.get("/metrics", params={"name[]": "x" * 201})
    assert too_long.status_code == 422
