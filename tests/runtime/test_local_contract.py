"""The runtime contract, run against real local processes under each limit mechanism."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

import pytest

from corral.domain.errors import NotFound
from corral.runtime.base import LaunchSpec
from corral.runtime.local import LocalProcessRuntime
from tests.runtime import agents
from tests.runtime.contract import Behaviour, ContractHarness, RuntimeContract


def local_harness(runtime: LocalProcessRuntime) -> ContractHarness:
    def spec(org: str, agent_id: str, behaviour: Behaviour) -> LaunchSpec:
        return agents.spec(org, agent_id, behaviour)

    async def kill(org: str, agent_id: str) -> None:
        pid = (await runtime.status(org, agent_id)).pid
        if pid is None:
            raise NotFound(f"{agent_id} is not running")
        os.kill(pid, signal.SIGKILL)

    async def write_file(org: str, agent_id: str, path: str, text: str) -> None:
        target = runtime.paths(org, agent_id).workspace / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    async def read_file(org: str, agent_id: str, path: str) -> str | None:
        target = runtime.paths(org, agent_id).workspace / path
        return target.read_text() if target.is_file() else None

    return ContractHarness(runtime, spec, kill, write_file, read_file)


class TestLocalRuntimeContract(RuntimeContract):
    @pytest.fixture
    async def harness(self, runtime: LocalProcessRuntime) -> AsyncIterator[ContractHarness]:
        yield local_harness(runtime)
