"""The shared runtime contract, run against the Kubernetes runtime over the fake API server.

The fake's kubelet plays the contract's agent behaviours: it writes the ready line to the pod's
log, ends FAIL and FINISH containers at once, exits SERVE containers promptly when their pod is
deleted and lets STUBBORN ones run out the grace period before they are killed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from corral.domain.errors import NotFound
from corral.runtime.base import LaunchSpec
from corral.runtime.kubernetes import KubernetesRuntime, names
from tests.k8s.fake import FakeGateway, Kubelet
from tests.runtime import agents
from tests.runtime.contract import READY, Behaviour, ContractHarness, RuntimeContract

COMMAND = "contract-agent"


class ContractKubelet(Kubelet):
    """Runs the contract's behaviours, named in the container's args."""

    @staticmethod
    def behaviour(pod: dict[str, Any]) -> tuple[Behaviour, str]:
        _, behaviour, agent_id = pod["spec"]["containers"][0]["args"]
        return Behaviour(behaviour), agent_id

    def started(self, fake: FakeGateway, pod: dict[str, Any]) -> None:
        behaviour, agent_id = self.behaviour(pod)
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        fake.log(namespace, name, f"{READY} {agent_id}\n")
        codes = {Behaviour.FAIL: 3, Behaviour.FINISH: 0}
        if behaviour in codes:
            uid = pod["metadata"]["uid"]
            end = functools.partial(self._end, fake, namespace, name, uid, codes[behaviour])
            asyncio.get_running_loop().call_soon(end)

    @staticmethod
    def _end(fake: FakeGateway, namespace: str, name: str, uid: str, code: int) -> None:
        pod = fake.objects.get(("Pod", namespace, name))
        if pod is not None and pod["metadata"]["uid"] == uid:
            fake.finish(namespace, name, exit_code=code)

    def stopping(
        self, fake: FakeGateway, pod: dict[str, Any], grace_period: int | None
    ) -> tuple[float, int]:
        behaviour, _ = self.behaviour(pod)
        if behaviour is Behaviour.STUBBORN:
            return float(30 if grace_period is None else grace_period), 137
        return 0.01, 0


def k8s_harness(runtime: KubernetesRuntime, fake: FakeGateway) -> ContractHarness:
    def spec(org: str, agent_id: str, behaviour: Behaviour) -> LaunchSpec:
        base = agents.spec(org, agent_id, behaviour)
        return dataclasses.replace(base, command=[COMMAND, behaviour.value, agent_id])

    def volume(org: str, agent_id: str) -> dict[str, str]:
        key = (f"org-{org}", names.workspace_claim_name(agent_id))
        if key not in fake.volumes:
            raise NotFound(f"no workspace for {agent_id} in {org}")
        return fake.volumes[key]

    async def kill(org: str, agent_id: str) -> None:
        fake.finish(f"org-{org}", agent_id, exit_code=137, reason="Error")

    async def write_file(org: str, agent_id: str, path: str, text: str) -> None:
        volume(org, agent_id)[path] = text

    async def read_file(org: str, agent_id: str, path: str) -> str | None:
        try:
            return volume(org, agent_id).get(path)
        except NotFound:
            return None

    return ContractHarness(runtime, spec, kill, write_file, read_file)


class TestKubernetesRuntimeContract(RuntimeContract):
    @pytest.fixture
    async def harness(self) -> AsyncIterator[ContractHarness]:
        fake = FakeGateway(linger=0.01, kubelet=ContractKubelet())
        runtime = KubernetesRuntime(fake, poll_interval=0.005, delete_timeout=5, watch_retry=0.01)
        await runtime.prepare_org("acme", labels={"tier": "standard"})
        try:
            yield k8s_harness(runtime, fake)
        finally:
            await runtime.close()
