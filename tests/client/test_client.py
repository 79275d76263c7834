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
    AsyncClient,
    Client,
    InvalidInput,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Unavailable,
)
from tests.support import corral_up


def test_the_client_exports_exactly_its_public_names() -> None:
    assert sorted(corral.client.__all__) == sorted(
        [
            "JSON",
            "TERMINAL_STATES",
            "AsyncClient",
            "Call",
            "Client",
            "Conflict",
            "CorralError",
            "InvalidInput",
            "NotFound",
            "PermissionDenied",
            "QuotaExceeded",
            "RateLimited",
            "Unavailable",
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
        assert created["name"] == "acme" and created["apiKey"].startswith("crl_")
        assert "acme" in [o["name"] for o in admin.list_orgs()]
        agent = admin.provision_agent("acme", name="w", role="worker", wait=True)
        assert agent["state"] == "running"
        task = admin.submit_task("acme", role="worker", payload={"op": "echo", "n": 1})
        done = admin.wait_task("acme", task["id"], timeout=120)
        assert done["state"] == "completed" and done["result"] == {"echo": {"op": "echo", "n": 1}}
        page = admin.list_tasks("acme", state=["completed"], limit=10)
        assert task["id"] in [t["id"] for t in page["tasks"]]
        assert "corral_dispatch_latency_seconds_count" in admin.metrics()
        paused = admin.pause_agent("acme", agent["id"])
        assert paused["state"] == "paused"
        with Client(url, created["apiKey"]) as acme:
            assert acme.get_org("acme")["plan"] == "free"
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
        done = await admin.wait_task("globex", task["id"], timeout=120)
        assert done["state"] == "completed" and done["result"] == {"slept": 0.2}
        agents = await admin.list_agents("globex")
        assert agents and {a["role"] for a in agents} == {
            "sleeper"
        }  # its role, provisioned on demand
        logs = await admin.agent_logs("globex", agents[0]["id"], tail=50)
        assert isinstance(logs, str)
        await admin.put_secret("globex", "token", "s3cret")
        secrets = await admin.list_secrets("globex")
        assert "token" in str(secrets) and "s3cret" not in str(secrets)
        with pytest.raises(NotFound):
            await admin.get_task("globex", "task_nope")
