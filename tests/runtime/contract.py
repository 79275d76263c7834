"""The AgentRuntime contract: what every runtime must do, whatever runs the agents.

A runtime's test module subclasses :class:`RuntimeContract` and provides a ``harness`` fixture
yielding a :class:`ContractHarness`; the same tests then run against local processes, a fake
Kubernetes API or a real cluster::

    class TestLocalRuntimeContract(RuntimeContract):
        @pytest.fixture
        async def harness(self, tmp_path): ...  # yield ContractHarness(...), then close

The harness turns the four agent :class:`Behaviour` s into launch specs its runtime can run,
kills an agent from outside as a crash would, and reads and writes files in a workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import pytest

from corral.domain.errors import Conflict, CorralError
from corral.runtime.base import AgentRuntime, LaunchSpec, Phase, RuntimeStatus
from tests.support import eventually

__all__ = ["READY", "Behaviour", "ContractHarness", "RuntimeContract", "watching"]

READY = "corral-contract-ready"
"""The line every behaviour prints (followed by a space and its agent id) once it is up."""


class Behaviour(StrEnum):
    SERVE = "serve"  # print READY, run until SIGTERM, then exit 0
    STUBBORN = "stubborn"  # print READY, ignore SIGTERM (only SIGKILL ends it)
    FAIL = "fail"  # print READY, exit 3 at once
    FINISH = "finish"  # print READY, exit 0 at once


@dataclass
class ContractHarness:
    runtime: AgentRuntime
    spec: Callable[[str, str, Behaviour], LaunchSpec]  # (org, agent_id, behaviour)
    kill: Callable[[str, str], Awaitable[None]]  # end a running agent as a crash would
    write_file: Callable[[str, str, str, str], Awaitable[None]]  # org, agent, path, text
    read_file: Callable[[str, str, str], Awaitable[str | None]]  # None if missing
    grace: float = 0.5  # what stop() gives a stubborn agent in these tests


async def _ready(h: ContractHarness, org: str, agent_id: str) -> None:
    async def up() -> bool:
        return f"{READY} {agent_id}" in await h.runtime.logs(org, agent_id)

    await eventually(up, message=f"{agent_id} printed its ready line")


async def _phase(h: ContractHarness, org: str, agent_id: str, *phases: Phase) -> RuntimeStatus:
    async def probe() -> RuntimeStatus | None:
        status = await h.runtime.status(org, agent_id)
        return status if status.phase in phases else None

    status = await eventually(probe, message=f"{agent_id} in {phases}")
    assert status is not None
    return status


async def _start(h: ContractHarness, org: str, agent_id: str, b: Behaviour) -> RuntimeStatus:
    status = await h.runtime.start(h.spec(org, agent_id, b))
    assert status.phase in (Phase.STARTING, Phase.RUNNING)
    await _ready(h, org, agent_id)
    return status


@contextlib.asynccontextmanager
async def watching(runtime: AgentRuntime) -> AsyncIterator[AsyncIterator[RuntimeStatus]]:
    """``runtime.exits()``, closed on the way out."""
    exits = runtime.exits()
    try:
        yield exits
    finally:
        aclose = getattr(exits, "aclose", None)
        if aclose is not None:
            await aclose()


async def _next_exit(exits: AsyncIterator[RuntimeStatus], agent_id: str) -> RuntimeStatus:
    async def first() -> RuntimeStatus:
        async for status in exits:
            if status.agent_id == agent_id:
                return status
        raise AssertionError("exits() ended")

    return await asyncio.wait_for(first(), timeout=10)


class RuntimeContract:
    """Tests any AgentRuntime must pass; subclasses provide the ``harness`` fixture."""

    async def test_an_unknown_agent_is_absent(self, harness: ContractHarness) -> None:
        status = await harness.runtime.status("acme", "agent-nobody")
        assert status.phase is Phase.ABSENT
        assert status.pid is None
        assert not await harness.runtime.workspace_exists("acme", "agent-nobody")

    async def test_a_started_agent_runs(self, harness: ContractHarness) -> None:
        await _start(harness, "acme", "agent-run", Behaviour.SERVE)
        status = await _phase(harness, "acme", "agent-run", Phase.RUNNING)
        assert (status.org, status.agent_id) == ("acme", "agent-run")
        assert status.limits
        assert await harness.runtime.workspace_exists("acme", "agent-run")
        listed = {(s.org, s.agent_id): s.phase for s in await harness.runtime.list_agents()}
        assert listed[("acme", "agent-run")] is Phase.RUNNING

    async def test_starting_a_running_agent_is_a_conflict(self, harness: ContractHarness) -> None:
        await _start(harness, "acme", "agent-twice", Behaviour.SERVE)
        with pytest.raises(Conflict):
            await harness.runtime.start(harness.spec("acme", "agent-twice", Behaviour.SERVE))
        assert (await harness.runtime.status("acme", "agent-twice")).phase is Phase.RUNNING

    async def test_stop_ends_the_agent_and_keeps_its_workspace(
        self, harness: ContractHarness
    ) -> None:
        await _start(harness, "acme", "agent-stop", Behaviour.SERVE)
        await harness.runtime.stop("acme", "agent-stop", grace=5)
        status = await harness.runtime.status("acme", "agent-stop")
        assert status.phase in (Phase.EXITED, Phase.ABSENT)
        assert status.pid is None
        assert await harness.runtime.workspace_exists("acme", "agent-stop")

    async def test_stop_is_idempotent(self, harness: ContractHarness) -> None:
        await harness.runtime.stop("acme", "agent-never-started", grace=1)
        await _start(harness, "acme", "agent-idem", Behaviour.SERVE)
        await harness.runtime.stop("acme", "agent-idem", grace=5)
        await harness.runtime.stop("acme", "agent-idem", grace=5)
        assert (await harness.runtime.status("acme", "agent-idem")).phase is not Phase.RUNNING

    async def test_a_stubborn_agent_is_killed_after_the_grace(
        self, harness: ContractHarness
    ) -> None:
        await _start(harness, "acme", "agent-stubborn", Behaviour.STUBBORN)
        await harness.runtime.stop("acme", "agent-stubborn", grace=harness.grace)
        status = await harness.runtime.status("acme", "agent-stubborn")
        assert status.phase in (Phase.EXITED, Phase.ABSENT)

    async def test_the_workspace_survives_stop_and_start(self, harness: ContractHarness) -> None:
        await _start(harness, "acme", "agent-keep", Behaviour.SERVE)
        await harness.write_file("acme", "agent-keep", "notes/plan.txt", "step 1\n")
        await harness.runtime.stop("acme", "agent-keep", grace=5)
        await _start(harness, "acme", "agent-keep", Behaviour.SERVE)
        assert await harness.read_file("acme", "agent-keep", "notes/plan.txt") == "step 1\n"

    async def test_logs_hold_the_agents_output(self, harness: ContractHarness) -> None:
        await _start(harness, "acme", "agent-logs", Behaviour.SERVE)
        logs = await harness.runtime.logs("acme", "agent-logs")
        assert f"{READY} agent-logs" in logs
        assert len((await harness.runtime.logs("acme", "agent-logs", tail=1)).splitlines()) == 1
        assert await harness.runtime.logs("acme", "agent-nobody") == ""

    async def test_a_failing_agent_is_reported_crashed(self, harness: ContractHarness) -> None:
        async with watching(harness.runtime) as exits:
            await harness.runtime.start(harness.spec("acme", "agent-fail", Behaviour.FAIL))
            event = await _next_exit(exits, "agent-fail")
        assert event.phase is Phase.CRASHED
        assert event.exit_code == 3
        assert (await harness.runtime.status("acme", "agent-fail")).phase is Phase.CRASHED

    async def test_a_killed_agent_is_reported_crashed(self, harness: ContractHarness) -> None:
        async with watching(harness.runtime) as exits:
            await _start(harness, "acme", "agent-killed", Behaviour.SERVE)
            await harness.kill("acme", "agent-killed")
            event = await _next_exit(exits, "agent-killed")
        assert event.phase is Phase.CRASHED
        assert event.org == "acme"

    async def test_a_clean_exit_is_reported_exited(self, harness: ContractHarness) -> None:
        async with watching(harness.runtime) as exits:
            await harness.runtime.start(harness.spec("acme", "agent-done", Behaviour.FINISH))
            event = await _next_exit(exits, "agent-done")
        assert event.phase is Phase.EXITED
        assert event.exit_code == 0

    async def test_a_requested_stop_is_not_reported_as_an_exit(
        self, harness: ContractHarness
    ) -> None:
        async with watching(harness.runtime) as exits:
            await _start(harness, "acme", "agent-asked", Behaviour.SERVE)
            await harness.runtime.stop("acme", "agent-asked", grace=5)
            await harness.runtime.start(harness.spec("acme", "agent-crash", Behaviour.FAIL))
            event = await asyncio.wait_for(anext(exits), timeout=10)
        assert event.agent_id == "agent-crash"

    async def test_a_crashed_agent_can_start_again(self, harness: ContractHarness) -> None:
        async with watching(harness.runtime) as exits:
            await _start(harness, "acme", "agent-again", Behaviour.SERVE)
            await harness.kill("acme", "agent-again")
            await _next_exit(exits, "agent-again")
        await _start(harness, "acme", "agent-again", Behaviour.SERVE)
        await _phase(harness, "acme", "agent-again", Phase.RUNNING)

    async def test_deleting_a_workspace_removes_it(self, harness: ContractHarness) -> None:
        await _start(harness, "acme", "agent-del", Behaviour.SERVE)
        with pytest.raises(Conflict):
            await harness.runtime.delete_workspace("acme", "agent-del")
        await harness.runtime.stop("acme", "agent-del", grace=5)
        await harness.runtime.delete_workspace("acme", "agent-del")
        assert not await harness.runtime.workspace_exists("acme", "agent-del")
        await harness.runtime.delete_workspace("acme", "agent-del")  # idempotent

    async def test_orgs_are_independent(self, harness: ContractHarness) -> None:
        await harness.runtime.prepare_org("alpha", labels={"corral/plan": "standard"})
        await harness.runtime.prepare_org("beta", labels={"corral/plan": "free"})
        await _start(harness, "alpha", "agent-same", Behaviour.SERVE)
        await _start(harness, "beta", "agent-same", Behaviour.SERVE)
        await harness.write_file("alpha", "agent-same", "who", "alpha")
        assert await harness.read_file("beta", "agent-same", "who") is None
        await harness.runtime.stop("alpha", "agent-same", grace=5)
        assert (await harness.runtime.status("beta", "agent-same")).phase is Phase.RUNNING

    async def test_removing_an_org_stops_its_agents_and_deletes_its_workspaces(
        self, harness: ContractHarness
    ) -> None:
        await harness.runtime.prepare_org("gone", labels={})
        await harness.runtime.prepare_org("stays", labels={})
        await _start(harness, "gone", "agent-a", Behaviour.SERVE)
        await _start(harness, "stays", "agent-b", Behaviour.SERVE)
        await harness.runtime.remove_org("gone")
        assert (await harness.runtime.status("gone", "agent-a")).phase is Phase.ABSENT
        assert not await harness.runtime.workspace_exists("gone", "agent-a")
        assert (await harness.runtime.status("stays", "agent-b")).phase is Phase.RUNNING
        await harness.runtime.remove_org("gone")  # idempotent

    async def test_names_that_are_not_dns_labels_are_refused(
        self, harness: ContractHarness
    ) -> None:
        with pytest.raises(CorralError):
            await harness.runtime.start(harness.spec("../etc", "agent-x", Behaviour.SERVE))
        with pytest.raises(CorralError):
            await harness.runtime.start(harness.spec("acme", "a/../../b", Behaviour.SERVE))
