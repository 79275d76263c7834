"""An agent's history: each state it entered, when and why, written with the state itself
(in the same transaction as the compare-and-set), on both databases."""

from datetime import UTC, datetime

from corral.domain.admission import AdmittedResources
from corral.domain.agents import Agent, AgentState
from corral.domain.ids import OrgId, OrgSlug
from corral.domain.plans import STANDARD
from corral.domain.quantities import parse
from corral.domain.tenancy import Organization
from corral.store.agents import AgentRepository
from corral.store.db import Database
from corral.store.tenants import OrgRepository

S = AgentState


async def test_each_state_an_agent_entered_is_kept_with_when_and_why(db: Database) -> None:
    org = Organization(OrgId("org_acme"), OrgSlug("acme"), STANDARD, datetime.now(UTC))
    await OrgRepository(db).create(org, key_id="kacme", key_secret="s")
    agents = AgentRepository(db)
    resources = AdmittedResources(parse("500m"), parse("1"), parse("1Gi"), parse("2Gi"))
    await agents.create(
        agent_id="agent-acme-a-1", org_id=org.id, org=org.slug, name="a", role="r",
        resources=resources, command=[],
    )  # fmt: skip
    assert await agents.transition("agent-acme-a-1", expect=[S.PROVISIONING], to=S.RUNNING)
    assert not await agents.transition("agent-acme-a-1", expect=[S.PAUSED], to=S.RESUMING)
    assert await agents.transition(
        "agent-acme-a-1", expect=[S.RUNNING], to=S.FAILED, detail="crashed 3 times"
    )
    history = await agents.history("agent-acme-a-1")
    assert [(state, why) for state, _, why in history] == [
        ("provisioning", ""),
        ("running", ""),
        ("failed", "crashed 3 times"),  # the refused compare-and-set left no trace
    ]
    times = [at for _, at, _ in history]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    assert [s for s, _, _ in await agents.history("agent-acme-a-1", newest=2)] == [
        "running",
        "failed",
    ]
    await agents.delete("agent-acme-a-1")  # an undone provision takes its history with it
    assert await agents.history("agent-acme-a-1") == []


async def test_an_agent_is_returned_as_recorded_and_reports_ready_in_one_write(
    db: Database,
) -> None:
    orgs = OrgRepository(db)
    acme = Organization(OrgId("org_acme"), OrgSlug("acme"), STANDARD, datetime.now(UTC))
    umbrella = Organization(OrgId("org_umb"), OrgSlug("umbrella"), STANDARD, datetime.now(UTC))
    await orgs.create(acme, key_id="kacme", key_secret="s")
    await orgs.create(umbrella, key_id="kumb", key_secret="s")
    agents = AgentRepository(db)
    resources = AdmittedResources(parse("500m"), parse("1"), parse("1Gi"), parse("2Gi"))
    created = await agents.create(
        agent_id="agent-acme-a-1", org_id=acme.id, org=acme.slug, name="a", role="r",
        resources=resources, command=["run", "it"], slots=2, env={"K": "v"}, role_version=3,
        public_key="UKEY",
    )  # fmt: skip
    assert created == await agents.get("agent-acme-a-1")
    assert created.state is S.PROVISIONING and created.public_key == "UKEY"

    at = datetime.now(UTC)
    # another org's word for the agent is not taken, and leaves no trace
    assert await agents.to_running("agent-acme-a-1", org=umbrella.slug, at=at) is None
    assert await agents.to_running("agent-acme-nobody-1", org=acme.slug, at=at) is None
    ready = await agents.to_running("agent-acme-a-1", org=acme.slug, at=at)
    assert ready is not None and ready == await agents.get("agent-acme-a-1")
    assert ready.state is S.RUNNING and ready.org == "acme" and ready.last_seen_at == at
    assert ready.resumed_at is None and ready.env == {"K": "v"} and ready.slots == 2
    assert await agents.to_running("agent-acme-a-1", org=acme.slug, at=at) is None  # said again

    # from resuming, it is resumed then too
    assert await agents.transition("agent-acme-a-1", expect=[S.RUNNING], to=S.PAUSING)
    assert await agents.transition("agent-acme-a-1", expect=[S.PAUSING], to=S.PAUSED)
    assert await agents.transition("agent-acme-a-1", expect=[S.PAUSED], to=S.RESUMING)
    later = datetime.now(UTC)
    resumed = await agents.to_running("agent-acme-a-1", org=acme.slug, at=later)
    assert resumed is not None and resumed.resumed_at == later and resumed.last_seen_at == later
    history = [state for state, _, _ in await agents.history("agent-acme-a-1")]
    assert history == ["provisioning", "running", "pausing", "paused", "resuming", "running"]


async def test_when_many_agents_were_heard_from_is_recorded_in_one_call(db: Database) -> None:
    org = Organization(OrgId("org_acme"), OrgSlug("acme"), STANDARD, datetime.now(UTC))
    await OrgRepository(db).create(org, key_id="kacme", key_secret="s")
    agents = AgentRepository(db)
    resources = AdmittedResources(parse("500m"), parse("1"), parse("1Gi"), parse("2Gi"))
    ids = [f"agent-acme-a-{n}" for n in range(300)]
    for agent_id in ids:
        await agents.create(
            agent_id=agent_id, org_id=org.id, org=org.slug, name=agent_id[-5:], role="r",
            resources=resources, command=[],
        )  # fmt: skip
    base = datetime.now(UTC).replace(microsecond=0)
    heard = {agent_id: base.replace(second=n % 60) for n, agent_id in enumerate(ids[:250])}
    await agents.seen({**heard, "agent-acme-gone-1": base})  # one no longer there: no harm
    by_id: dict[str, Agent] = {a.id: a for a in await agents.find()}
    assert {a: by_id[a].last_seen_at for a in heard} == heard  # each its own time
    assert all(by_id[a].last_seen_at is None for a in ids[250:])  # the others untouched
    await agents.seen({})  # nothing to record: no write
