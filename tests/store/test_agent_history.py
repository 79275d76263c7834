"""An agent's history: each state it entered, when and why, written with the state itself
(in the same transaction as the compare-and-set), on both databases."""

from datetime import UTC, datetime

from corral.domain.admission import AdmittedResources
from corral.domain.agents import AgentState
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
        agent_id="agent-acme-a-1", org_id=org.id, name="a", role="r", resources=resources,
        command=[],
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
