"""Every org operation is all-or-nothing: a fault injected at any of its steps, on a running
platform with its real nats-server, leaves nothing half-done.

A failed create leaves no org row, bus record, account JWT or stream; a failed plan change
leaves the old plan in the store, the bus (record, JWT, streams) and the scheduler; a delete
erases nothing before it is durably marked, and once marked it finishes despite a failing step.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client, RawCredentials

from corral.bus import streams
from corral.bus.accounts import JetStreamCaps
from corral.bus.resolver import ResolverClient
from corral.control.tenants import OrgStep
from corral.domain import subjects
from corral.domain.errors import Unavailable
from corral.domain.plans import PLANS
from corral.domain.tenancy import Organization
from tests.e2e.conftest import Live, agent_processes
from tests.support import eventually

LAYERS = ["bus", "vault", "runtime", "scheduler"]


class Fault:
    """An injected failure: raised while ``armed``, for ``times`` calls (None: always)."""

    def __init__(self, times: int | None = None) -> None:
        self.armed = True
        self.times = times
        self.hits = 0

    def fire(self, where: str) -> None:
        if not self.armed or (self.times is not None and self.hits >= self.times):
            return
        self.hits += 1
        raise Unavailable(f"injected fault in {where}")


def fail_step(live: Live, name: str, fault: Fault, *, on: str) -> None:
    """The layer ``name`` does its real work, then fails (``on`` is "apply" or "remove")."""
    steps = live.platform.hooks.steps
    [i] = [n for n, s in enumerate(steps) if s.name == name]
    real: OrgStep = steps[i]

    def after(action: Callable[[Organization], Awaitable[None]]) -> Any:
        async def run(org: Organization) -> None:
            await action(org)
            fault.fire(f"the {name} step")

        return run

    steps[i] = OrgStep(
        name,
        after(real.apply) if on == "apply" else real.apply,
        after(real.remove) if on == "remove" else real.remove,
    )


def fail_bus(live: Live, where: str, fault: Fault, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail inside the bus step, after its real work: the account pushed, or the streams made;
    or refuse at admission (the real check, with caps that are full)."""
    if where == "admission":
        authority = live.platform.bus.authority
        used = authority.reserved()
        monkeypatch.setattr(authority, "caps", JetStreamCaps(memory=used[0], storage=used[1]))
    elif where == "account":
        push = ResolverClient.push

        async def pushed_then_lost(self: ResolverClient, jwt: str, *, name: str) -> None:
            await push(self, jwt, name=name)
            if name != "PLATFORM":
                fault.fire("the account push")

        monkeypatch.setattr(ResolverClient, "push", pushed_then_lost)
    else:
        ensure = streams.ensure_events

        async def made_then_lost(*args: Any, **kwargs: Any) -> int:
            backlog = await ensure(*args, **kwargs)
            fault.fire("the streams")
            return backlog

        monkeypatch.setattr(streams, "ensure_events", made_then_lost)


async def server_state(live: Live) -> dict[str, Any]:
    """What the nats-server holds: account JWTs in its resolver, streams, reservations."""
    p = live.platform
    async with ResolverClient(p.bus.url, p.bus.authority.mint_system_creds()) as system:
        jsz = await system.ask("$SYS.REQ.SERVER.PING.JSZ", b"{}", doing="reading JetStream")
    jwt_dir = live.data_dir / "nats" / "server" / "jwt"
    return {
        "jwts": sorted(f.name for f in jwt_dir.glob("*.jwt")),
        "streams": jsz.get("streams", 0),
        "reserved_storage": jsz.get("reserved_storage", 0),
    }


async def everything(live: Live) -> dict[str, Any]:
    """Every layer's view of which orgs exist."""
    p = live.platform
    runtime_dir = live.data_dir / "agents" / "orgs"
    return {
        "store": [o.slug for o in await p.orgs.list()],
        "deleting": [o.slug for o in await p.orgs.deleting()],
        "bus": p.bus.authority.orgs(),
        "scheduler": sorted(o.slug for o in p.dispatcher.book.orgs.values()),
        "runtime": sorted(d.name for d in runtime_dir.iterdir()) if runtime_dir.exists() else [],
        **await server_state(live),
    }


def account_claims(live: Live, slug: str) -> dict[str, Any]:
    """The org's account JWT as the server's resolver stores it, decoded."""
    account = live.platform.bus.authority.org_account(slug)
    token = (live.data_dir / "nats" / "server" / "jwt" / f"{account}.jwt").read_text()
    body = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return claims


async def inbox_max_bytes(live: Live, slug: str) -> int:
    creds = live.platform.bus.authority.mint_org_admin_creds(slug)
    nc = Client()
    await nc.connect(live.platform.bus.url, user_credentials=RawCredentials(creds))
    try:
        info = await nc.jetstream().stream_info(subjects.INBOX_STREAM)
        return int(info.config.max_bytes or 0)
    finally:
        await nc.close()


# ---- create ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["admission", "account", *LAYERS])
async def test_a_create_that_fails_at_any_step_leaves_nothing(
    live: Live, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await live.org("keep")
    before = await everything(live)
    fault = Fault(times=1)  # a passing fault: the undoing works
    if where in LAYERS:
        fail_step(live, where, fault, on="apply")
    else:
        fail_bus(live, where, fault, monkeypatch)

    r = await live.admin.post("/v1/orgs", json={"name": "doomed", "plan": "standard"})

    assert r.status_code == (409 if where == "admission" else 503), r.text
    assert (await live.admin.get("/v1/orgs/doomed")).status_code == 404
    assert await everything(live) == before
    fault.armed = False
    monkeypatch.undo()  # the same name can be created once the fault is gone
    await live.org("doomed")
    assert "doomed" in (await everything(live))["bus"]


# ---- plan change -----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["admission", "account", "streams", *LAYERS, "store"])
async def test_a_plan_change_that_fails_at_any_step_keeps_the_old_plan_everywhere(
    live: Live, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, _ = await live.org("mover", plan="free")
    await live.platform.bus.ensure_streams("mover")  # as its first agent does
    free, standard = PLANS["free"].bus, PLANS["standard"].bus
    fault = Fault(times=1)
    if where in LAYERS:
        fail_step(live, where, fault, on="apply")
    elif where == "store":
        set_plan: Callable[[str, str], Awaitable[Organization]] = live.platform.orgs.set_plan

        async def fails(slug: str, plan: str) -> Organization:
            fault.fire("the store")
            return await set_plan(slug, plan)

        monkeypatch.setattr(live.platform.orgs, "set_plan", fails)
    else:
        fail_bus(live, where, fault, monkeypatch)

    r = await live.admin.patch("/v1/orgs/mover", json={"plan": "standard"})

    assert r.status_code == (409 if where == "admission" else 503), r.text
    assert (await live.admin.get("/v1/orgs/mover")).json()["plan"] == "free"
    assert live.platform.bus.authority.limits("mover") == free
    limits = account_claims(live, "mover")["nats"]["limits"]
    assert limits["disk_storage"] == free.jetstream_storage
    assert await inbox_max_bytes(live, "mover") == free.inbox_max_bytes
    assert live.platform.dispatcher.book.orgs[body["id"]].plan.name == "free"

    fault.armed = False
    monkeypatch.undo()
    r = await live.admin.patch("/v1/orgs/mover", json={"plan": "standard"})
    assert r.status_code == 200, r.text
    assert account_claims(live, "mover")["nats"]["limits"]["disk_storage"] == (
        standard.jetstream_storage
    )
    assert await inbox_max_bytes(live, "mover") == standard.inbox_max_bytes
    assert live.platform.dispatcher.book.orgs[body["id"]].plan.name == "standard"


async def test_an_org_gets_its_streams_with_its_first_agent_sized_by_its_plan_then(
    live: Live,
) -> None:
    """Creating an org makes no stream; a plan change before its first agent changes its
    account alone, and the streams its first agent makes have the plan it has then."""
    before = (await server_state(live))["streams"]
    await live.org("lazy", plan="free")
    assert (await server_state(live))["streams"] == before
    r = await live.admin.patch("/v1/orgs/lazy", json={"plan": "standard"})
    assert r.status_code == 200, r.text
    assert (await server_state(live))["streams"] == before
    await live.agent("lazy", "worker")
    assert (await server_state(live))["streams"] == before + 3  # INBOX, EVENTS, OBJECTS
    assert await inbox_max_bytes(live, "lazy") == PLANS["standard"].bus.inbox_max_bytes
    r = await live.admin.patch("/v1/orgs/lazy", json={"plan": "free"})
    assert r.status_code == 200, r.text
    assert await inbox_max_bytes(live, "lazy") == PLANS["free"].bus.inbox_max_bytes


async def test_streams_that_fail_to_be_made_fail_the_first_agent_and_come_with_the_next(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    await live.org("later", plan="free")
    fault = Fault(times=1)
    fail_bus(live, "streams", fault, monkeypatch)
    r = await live.admin.post("/v1/orgs/later/agents", json={"name": "first", "wait": True})
    assert r.status_code == 503, r.text
    assert fault.hits == 1
    await live.agent("later", "second")
    assert await inbox_max_bytes(live, "later") == PLANS["free"].bus.inbox_max_bytes


# ---- delete ----------------------------------------------------------------------------------


async def _populated(live: Live, name: str) -> dict[str, Any]:
    """An org with a secret and a running agent."""
    await live.org(name)
    r = await live.admin.put(f"/v1/orgs/{name}/secrets/token", json={"value": "s3cret"})
    assert r.status_code in (200, 201), r.text
    return await live.agent(name, "worker")


async def test_a_delete_that_fails_before_its_point_of_no_return_leaves_the_org_working(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await _populated(live, "kept")
    before = await everything(live)
    fault = Fault()

    async def fails(slug: str) -> Organization:
        fault.fire("the store")
        raise AssertionError("unreachable")

    monkeypatch.setattr(live.platform.orgs, "mark_deleting", fails)

    r = await live.admin.delete("/v1/orgs/kept")

    assert r.status_code == 503, r.text
    assert await everything(live) == before
    assert (await live.admin.get("/v1/orgs/kept/secrets")).json()["secrets"]
    got = (await live.admin.get(f"/v1/orgs/kept/agents/{agent['id']}")).json()
    assert got["state"] == "running"
    task = await live.task("kept", agent=agent["id"], payload={"op": "echo", "text": "hi"})
    assert (await live.wait_task("kept", task["id"]))["state"] == "completed"


@pytest.mark.parametrize("step", LAYERS)
async def test_a_delete_that_fails_at_a_step_is_finished_later(live: Live, step: str) -> None:
    empty = await everything(live)
    agent = await _populated(live, "gone")
    live.platform.deletion_retry_seconds = 0.2
    fault = Fault(times=1)
    fail_step(live, step, fault, on="remove")

    r = await live.admin.delete("/v1/orgs/gone")

    assert r.status_code == 503, r.text
    assert step in r.json()["error"]["message"]
    assert (await live.admin.get("/v1/orgs/gone")).status_code == 404

    async def finished() -> bool:
        return await everything(live) == empty

    await eventually(finished, timeout=30, message="the pending deletion finished")
    assert fault.hits == 1
    assert agent_processes(agent["id"]) == []
    r = await live.admin.get(f"/v1/orgs/gone/agents/{agent['id']}")
    assert r.status_code == 404
