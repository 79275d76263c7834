"""The typed client against a real platform (`corral up` as its own process): the same calls
sync and async, requests checked by the API's models before they are sent, and errors as the
platform's error tree."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import corral.client
from corral.client import (
    Agent,
    AsyncClient,
    Client,
    CreatedOrg,
    InvalidInput,
    NotFound,
    OrgDetail,
    PermissionDenied,
    QuotaExceeded,
    Task,
    TaskDetail,
    TaskPage,
    Unavailable,
    Usage,
)
from corral.domain.agents import AgentState
from corral.domain.tasks import TaskState
from tests.support import corral_up


def test_the_client_exports_exactly_its_public_names() -> None:
    assert sorted(corral.client.__all__) == sorted(
        [
            "JSON",
            "TERMINAL_STATES",
            "Agent",
            "AsyncClient",
            "AuditPage",
            "Call",
            "Client",
            "Conflict",
            "CorralError",
            "CreatedOrg",
            "Grant",
            "InvalidInput",
            "ModelUsage",
            "NotFound",
            "Org",
            "OrgDetail",
            "PermissionDenied",
            "QuotaExceeded",
            "RateLimited",
            "Role",
            "Secret",
            "Task",
            "TaskDetail",
            "TaskPage",
            "Unavailable",
            "Usage",
        ]
    )
    for name in corral.client.__all__:
        assert getattr(corral.client, name) is not None
    assert not hasattr(corral.client, "httpx")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with corral_up(tmp_path_factory.mktemp("client") / "data") as up:
        url = (up.data / "api.url").read_text().strip()
        key = (up.data / "admin.key").read_text().strip()
        yield url, key


def test_the_sync_client_runs_an_org_an_agent_and_a_task(platform: tuple[str, str]) -> None:
    url, key = platform
    with Client(url, key) as admin:
        created = admin.create_org("acme", plan="free")
        assert isinstance(created, CreatedOrg)
        assert created.name == "acme" and created.api_key.startswith("crl_")
        assert "acme" in [o.name for o in admin.list_orgs()]
        agent = admin.provision_agent("acme", name="w", role="worker", wait=True)
        assert isinstance(agent, Agent) and agent.state is AgentState.RUNNING
        assert agent.resources.requests.cpu and agent.created_at
        task = admin.submit_task("acme", role="worker", payload={"op": "echo", "n": 1})
        assert isinstance(task, Task) and task.payload == {"op": "echo", "n": 1}
        done = admin.wait_task("acme", task.id, timeout=120)
        assert isinstance(done, TaskDetail) and done.state is TaskState.COMPLETED
        assert done.result == {"echo": {"op": "echo", "n": 1}}
        assert done.history and done.history[-1].to == "completed"
        assert done.assigned_agent == agent.id and done.waiting is None
        page = admin.list_tasks("acme", state=["completed"], limit=10)
        assert isinstance(page, TaskPage) and task.id in [t.id for t in page.tasks]
        assert "corral_dispatch_latency_seconds_count" in admin.metrics()
        shown = admin.get_agent("acme", agent.name)  # the local runtime says its sandbox
        assert shown.id == agent.id and shown.sandbox
        paused = admin.pause_agent("acme", agent.id)
        assert paused.state is AgentState.PAUSED and paused.paused_at is not None
        usage = admin.org_usage("acme")
        assert isinstance(usage, Usage) and (usage.org, usage.plan) == ("acme", "free")
        assert usage.quota["pods"].hard and usage.models.period
        with Client(url, created.api_key) as acme:
            detail = acme.get_org("acme")
            assert isinstance(detail, OrgDetail) and detail.plan == "free"
            assert detail.usage["pods"].used == "0"
            with pytest.raises(PermissionDenied):
                acme.metrics()


def test_requests_are_checked_by_the_api_models_before_they_are_sent(
    platform: tuple[str, str],
) -> None:
    url, key = platform
    with Client(url, key) as admin:
        with pytest.raises(InvalidInput, match="invalid OrgCreate: name"):
            admin.create_org("Bad_Name!" * 10)
        with pytest.raises(InvalidInput, match="invalid AgentCreate: slots"):
            admin.provision_agent("acme", name="x", slots=0)
        with pytest.raises(InvalidInput, match="invalid TaskCreate: surprise"):
            admin.submit_task("acme", role="worker", surprise=True)


def test_errors_are_the_platform_error_tree(platform: tuple[str, str]) -> None:
    url, key = platform
    with Client(url, key) as admin:
        with pytest.raises(NotFound, match="globex"):
            admin.get_org("globex")
        admin.create_org("tiny", plan="free")
        admin.provision_agent("tiny", name="a1")
        admin.provision_agent("tiny", name="a2")
        with pytest.raises(QuotaExceeded, match="agent limit"):
            admin.provision_agent("tiny", name="a3")
        with pytest.raises(InvalidInput, match="exactly one of"):
            admin.submit_task("tiny", payload={})


def test_a_platform_that_is_not_there_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        Client(f"http://127.0.0.1:{port}", "crl_x") as nobody,
        pytest.raises(Unavailable, match="cannot reach the Corral API"),
    ):
        nobody.list_orgs()


async def test_the_async_client_does_the_same(platform: tuple[str, str], tmp_path: Path) -> None:
    url, key = platform
    async with AsyncClient(url, key) as admin:
        await admin.create_org("globex")
        declared = {"roles": [{"name": "sleeper", "maxAgents": 1}]}  # the built-in agent
        await admin.request("PUT", "/v1/orgs/globex/roles", json=declared)
        task = await admin.submit_task(
            "globex", role="sleeper", payload={"op": "sleep", "seconds": 0.2}
        )
        done = await admin.wait_task("globex", task.id, timeout=120)
        assert done.state == "completed" and done.result == {"slept": 0.2}
        agents = await admin.list_agents("globex")
        assert agents and {a.role for a in agents} == {"sleeper"}  # provisioned on demand
        [role] = await admin.list_roles("globex")
        assert role.name == "sleeper" and role.max_agents == 1
        assert [a.id for a in (await admin.get_role("globex", "sleeper")).agents or []] == [
            a.id for a in agents
        ]
        logs = await admin.agent_logs("globex", agents[0].id, tail=50)
        assert isinstance(logs, str)
        made = await admin.put_secret("globex", "token", "s3cret")
        assert made.name == "token" and made.version == 1
        secrets = await admin.list_secrets("globex")
        assert [s.name for s in secrets] == ["token"] and "s3cret" not in str(secrets)
        grant = await admin.add_grant("globex", secret="tok*", role="sleeper")
        assert [g.id for g in await admin.list_grants("globex")] == [grant.id]
        audit = await admin.audit("globex", limit=10)
        assert {"secret.put", "grant.add"} <= {e.action for e in audit.entries}
        with pytest.raises(NotFound):
            await admin.get_task("globex", "task_nope")
