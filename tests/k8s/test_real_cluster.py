"""The Kubernetes runtime against a real cluster: what neither the schemas nor the fake can show.

Admission (Pod Security ``restricted``, ResourceQuota refusals), RBAC decisions, PVC binding,
server-side apply conflicts, deletion timing and NetworkPolicy enforcement are the API server's,
the kubelet's and the network plugin's to decide, so they are tested here, on a cluster.

Runs only when ``KUBECONFIG`` is set, and then against that cluster: use a disposable one. It
creates and deletes namespaces ``org-e2e-<random>``. It needs a default StorageClass (or
``CORRAL_TEST_STORAGE_CLASS``), a pullable shell image (``CORRAL_TEST_AGENT_IMAGE``, default
``busybox:1.36``) and ``kubectl`` on ``PATH`` to read and write workspaces. Opt-in parts:
``CORRAL_TEST_NETWORK_POLICY=1`` when the cluster's network plugin enforces NetworkPolicies;
``CORRAL_TEST_K8S_CONTRACT=1`` to run the shared runtime contract, which uses the fixed
namespaces ``org-acme``, ``org-alpha``, ``org-beta``, ``org-gone`` and ``org-stays``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import shlex
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.models.authorization_v1 import ResourceAttributes, SubjectAccessReviewSpec
from lightkube.resources.authorization_v1 import SubjectAccessReview

from corral.domain.admission import ContainerRequest, apply_limit_range
from corral.domain.errors import PermissionDenied, QuotaExceeded
from corral.domain.grants import SecretGrant
from corral.domain.ids import OrgId, OrgSlug
from corral.domain.plans import PLANS
from corral.domain.quantities import ZERO
from corral.domain.tenancy import Organization
from corral.runtime.base import LaunchSpec, Phase
from corral.runtime.kubernetes import KubernetesRuntime, names
from corral.runtime.kubernetes import manifests as m
from corral.runtime.kubernetes.gateway import LightkubeGateway
from tests.runtime.contract import READY, Behaviour, ContractHarness, RuntimeContract
from tests.support import eventually

KUBECONFIG = os.environ.get("KUBECONFIG")
if not KUBECONFIG:
    pytest.skip(
        "KUBECONFIG is not set: the real-cluster suite needs a disposable cluster "
        "(see docs/kubernetes.md, 'Verifying on a real cluster')",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.kubernetes, pytest.mark.timeout(600)]

IMAGE = os.environ.get("CORRAL_TEST_AGENT_IMAGE", "busybox:1.36")
STORAGE_CLASS = os.environ.get("CORRAL_TEST_STORAGE_CLASS") or None
SLOW = 180.0  # seconds to wait for pulls, scheduling, binding and deletions

SCRIPTS = {
    Behaviour.SERVE: "trap 'exit 0' TERM; echo {ready}; "
    "while [ ! -f /tmp/corral-crash ]; do sleep 0.2; done; exit 137",
    Behaviour.STUBBORN: "trap '' TERM; echo {ready}; while true; do sleep 0.2; done",
    Behaviour.FAIL: "echo {ready}; exit 3",
    Behaviour.FINISH: "echo {ready}",
}


def client() -> AsyncClient:
    return AsyncClient(config=KubeConfig.from_file(KUBECONFIG or ""))


def shell_spec(org: str, agent_id: str, script: str, *, plan: str = "standard") -> LaunchSpec:
    resources = apply_limit_range(ContainerRequest(), PLANS[plan].limit_range)
    return LaunchSpec(
        org=org,
        org_id=f"org_{org.replace('-', '_')}",
        agent_id=agent_id,
        name=agent_id,
        role="worker",
        resources=resources,
        command=["sh", "-c", script],
        env={"CORRAL_ORG": org, "CORRAL_AGENT_ID": agent_id},
        creds=f"-----BEGIN NATS USER JWT-----\ncreds-of-{agent_id}\n",
        image=IMAGE,
    )


def behaviour_spec(org: str, agent_id: str, behaviour: Behaviour) -> LaunchSpec:
    return shell_spec(org, agent_id, SCRIPTS[behaviour].format(ready=f"{READY} {agent_id}"))


async def kubectl(*args: str, stdin: str | None = None) -> tuple[int, str]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH: it is needed to reach into workspaces")
    proc = await asyncio.create_subprocess_exec(
        "kubectl",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(stdin.encode() if stdin is not None else None)
    return proc.returncode or 0, out.decode()


async def write_file(org: str, agent_id: str, path: str, text: str) -> None:
    target = shlex.quote(f"{names.WORKSPACE_DIR}/{path}")
    script = f"mkdir -p $(dirname {target}) && cat > {target}"
    code, out = await kubectl(
        "exec", "-i", "-n", f"org-{org}", agent_id, "--", "sh", "-c", script, stdin=text
    )
    assert code == 0, out


async def read_file(org: str, agent_id: str, path: str) -> str | None:
    target = shlex.quote(f"{names.WORKSPACE_DIR}/{path}")
    script = f"if [ -f {target} ]; then cat {target}; else exit 44; fi"
    code, out = await kubectl("exec", "-n", f"org-{org}", agent_id, "--", "sh", "-c", script)
    if code == 44:
        return None
    assert code == 0, out
    return out


async def crash(org: str, agent_id: str) -> None:
    code, out = await kubectl(
        "exec", "-n", f"org-{org}", agent_id, "--", "touch", "/tmp/corral-crash"
    )
    assert code == 0, out


def make_runtime(gateway: LightkubeGateway, **kwargs: Any) -> KubernetesRuntime:
    return KubernetesRuntime(
        gateway,
        storage_class=STORAGE_CLASS,
        workspace_size="64Mi",
        poll_interval=0.5,
        delete_timeout=SLOW,
        **kwargs,
    )


@pytest.fixture
async def api() -> AsyncIterator[AsyncClient]:
    c = client()
    yield c
    await c.close()


@pytest.fixture
async def org() -> AsyncIterator[Organization]:
    """A fresh organization on the standard plan; its namespace is deleted afterwards."""
    slug = f"e2e-{secrets.token_hex(4)}"
    yield Organization(OrgId(f"org_{slug}"), OrgSlug(slug), PLANS["standard"], datetime.now(UTC))
    async with make_runtime(LightkubeGateway(client())) as rt:
        await rt.remove_org(slug)


@pytest.fixture
async def runtime(org: Organization) -> AsyncIterator[KubernetesRuntime]:
    async with make_runtime(LightkubeGateway(client())) as rt:
        await rt.ensure_org(org)
        yield rt


async def wait_phase(rt: KubernetesRuntime, org: str, agent_id: str, phase: Phase) -> None:
    async def probe() -> bool:
        return (await rt.status(org, agent_id)).phase is phase

    await eventually(probe, timeout=SLOW, interval=0.5, message=f"{agent_id} {phase}")


async def test_the_org_boundary_reads_back_as_applied(
    runtime: KubernetesRuntime, org: Organization
) -> None:
    gw = LightkubeGateway(client())
    try:
        ns = await gw.get("Namespace", org.namespace)
        labels = ns["metadata"]["labels"]
        assert labels["tenant"] == org.slug
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        quota = await gw.get("ResourceQuota", names.QUOTA_NAME, namespace=org.namespace)
        assert quota["spec"]["hard"]["pods"] == "15"
        for name in (names.DEFAULT_DENY_POLICY, names.ALLOW_DNS_POLICY, names.ALLOW_NATS_POLICY):
            await gw.get("NetworkPolicy", name, namespace=org.namespace)
    finally:
        await gw.close()


async def test_pod_security_admission_refuses_a_privileged_pod(
    runtime: KubernetesRuntime, org: Organization
) -> None:
    gw = LightkubeGateway(client())
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "rogue", "namespace": org.namespace},
        "spec": {
            "containers": [{"name": "c", "image": IMAGE, "securityContext": {"privileged": True}}]
        },
    }
    try:
        with pytest.raises(PermissionDenied, match="PodSecurity"):
            await gw.create(pod)
    finally:
        await gw.close()


async def test_an_agent_runs_pauses_and_resumes_with_its_workspace(
    runtime: KubernetesRuntime, org: Organization
) -> None:
    spec = behaviour_spec(org.slug, "agent-e2e", Behaviour.SERVE)
    await runtime.start(spec)
    await wait_phase(runtime, org.slug, spec.agent_id, Phase.RUNNING)  # the PVC bound
    assert f"{READY} agent-e2e" in await runtime.logs(org.slug, spec.agent_id)

    async def one_pod_counted() -> bool:
        return (await runtime.quota_status(org.slug)).used.get("pods", ZERO).units == 1

    await eventually(
        one_pod_counted, timeout=SLOW, interval=0.5, message="the quota counts the pod"
    )
    await write_file(org.slug, spec.agent_id, "notes/plan.txt", "step 1\n")
    await runtime.stop(org.slug, spec.agent_id, grace=5)
    assert (await runtime.status(org.slug, spec.agent_id)).phase is Phase.ABSENT
    assert await runtime.workspace_exists(org.slug, spec.agent_id)
    await runtime.start(spec)  # at once: stop() waited until the old pod was gone
    await wait_phase(runtime, org.slug, spec.agent_id, Phase.RUNNING)
    assert await read_file(org.slug, spec.agent_id, "notes/plan.txt") == "step 1\n"
    await runtime.stop(org.slug, spec.agent_id, grace=5)
    await runtime.delete_workspace(org.slug, spec.agent_id)
    assert not await runtime.workspace_exists(org.slug, spec.agent_id)


async def test_a_crash_is_reported_by_the_pod_watch(
    runtime: KubernetesRuntime, org: Organization
) -> None:
    exits = runtime.exits()
    try:
        spec = behaviour_spec(org.slug, "agent-fails", Behaviour.FAIL)
        await runtime.start(spec)

        async def first() -> Any:
            async for end in exits:
                if end.agent_id == spec.agent_id:
                    return end
            return None

        end = await asyncio.wait_for(first(), timeout=SLOW)
        assert (end.phase, end.exit_code) == (Phase.CRASHED, 3)
    finally:
        await exits.aclose()  # type: ignore[attr-defined]


async def test_the_api_servers_quota_refuses_a_pod_beyond_the_plan(org: Organization) -> None:
    free = dataclasses.replace(org, plan=PLANS["free"])  # 3 pods
    async with make_runtime(LightkubeGateway(client()), check_pod_quota=False) as rt:
        await rt.ensure_org(free)
        for i in range(3):
            await rt.start(shell_spec(org.slug, f"agent-{i}", "sleep 3600", plan="free"))
        with pytest.raises(QuotaExceeded, match="exceeded quota"):
            await rt.start(shell_spec(org.slug, "agent-3", "sleep 3600", plan="free"))


async def test_the_secret_reader_role_grants_only_the_granted_names(
    runtime: KubernetesRuntime, org: Organization, api: AsyncClient
) -> None:
    await runtime.ensure_org(
        org,
        grants=[SecretGrant("github-token"), SecretGrant("agent-ssh-*")],
        secrets={"github-token": b"x", "agent-ssh-ci": b"k", "db-password": b"p"},
    )
    user = f"system:serviceaccount:{org.namespace}:{names.SERVICE_ACCOUNT_NAME}"

    async def allowed(namespace: str, name: str, verb: str = "get") -> bool:
        review = SubjectAccessReview(
            spec=SubjectAccessReviewSpec(
                user=user,
                resourceAttributes=ResourceAttributes(
                    namespace=namespace, verb=verb, resource="secrets", name=name
                ),
            )
        )
        result = await api.create(review)
        return bool(result.status and result.status.allowed)

    assert await allowed(org.namespace, "github-token")
    assert await allowed(org.namespace, "agent-ssh-ci")
    assert not await allowed(org.namespace, "db-password")
    assert not await allowed(org.namespace, "github-token", verb="list")
    assert not await allowed("kube-system", "github-token")


async def test_a_forced_apply_takes_back_fields_another_manager_changed(
    runtime: KubernetesRuntime, org: Organization
) -> None:
    intruder = LightkubeGateway(client(), field_manager="someone-else")
    try:
        quota = m.org_manifests(org)[1]
        changed = {**quota, "spec": {"hard": {**quota["spec"]["hard"], "pods": "1000"}}}
        await intruder.apply(changed)
        await runtime.ensure_org(org)
        back = await intruder.get("ResourceQuota", names.QUOTA_NAME, namespace=org.namespace)
        assert back["spec"]["hard"]["pods"] == "15"
    finally:
        await intruder.close()


@pytest.mark.skipif(
    os.environ.get("CORRAL_TEST_NETWORK_POLICY") != "1",
    reason="set CORRAL_TEST_NETWORK_POLICY=1 on a cluster whose network plugin enforces policies",
)
async def test_network_policy_lets_dns_through_and_nothing_else(
    runtime: KubernetesRuntime, org: Organization
) -> None:
    script = (
        "if nslookup kubernetes.default.svc.cluster.local >/dev/null 2>&1; then echo DNS-OK; fi; "
        "if nc -w 3 kubernetes.default.svc.cluster.local 443 </dev/null; "
        "then echo API-REACHABLE; else echo API-BLOCKED; fi; sleep 3600"
    )
    spec = shell_spec(org.slug, "agent-net", script)
    await runtime.start(spec)

    async def verdict() -> str:
        logs = await runtime.logs(org.slug, spec.agent_id)
        return logs if "API-" in logs else ""

    logs = await eventually(verdict, timeout=SLOW, interval=1)
    assert "DNS-OK" in logs
    assert "API-BLOCKED" in logs


CONTRACT_ORGS = ("acme", "alpha", "beta", "gone", "stays")


@pytest.mark.skipif(
    os.environ.get("CORRAL_TEST_K8S_CONTRACT") != "1",
    reason="set CORRAL_TEST_K8S_CONTRACT=1 to run the runtime contract (it uses fixed namespaces)",
)
class TestRealClusterContract(RuntimeContract):
    @pytest.fixture
    async def harness(self) -> AsyncIterator[ContractHarness]:
        async with make_runtime(LightkubeGateway(client())) as rt:
            for slug in CONTRACT_ORGS:
                await rt.remove_org(slug)
            await rt.prepare_org("acme", labels={"tier": "standard"})
            try:
                yield ContractHarness(rt, behaviour_spec, crash, write_file, read_file, grace=1.0)
            finally:
                for slug in CONTRACT_ORGS:
                    await rt.remove_org(slug)
