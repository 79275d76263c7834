"""The Kubernetes runtime's lifecycle against an in-memory API server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from corral.domain.errors import Conflict, InvalidInput, NotFound, QuotaExceeded, Unavailable
from corral.domain.grants import SecretGrant
from corral.domain.quantities import parse
from corral.runtime.base import AgentRuntime, Phase, RuntimeStatus
from corral.runtime.kubernetes import KubernetesRuntime, QuotaDrift
from corral.runtime.kubernetes.manifests import agent_manifests
from corral.runtime.kubernetes.status import pod_status
from tests.k8s.factories import make_org, make_spec
from tests.k8s.fake import FakeGateway
from tests.support import eventually

NS = "org-acme-corp"


@pytest.fixture
def fake() -> FakeGateway:
    return FakeGateway(linger=0.05)


@pytest.fixture
async def runtime(fake: FakeGateway) -> AsyncIterator[KubernetesRuntime]:
    rt = KubernetesRuntime(fake, poll_interval=0.005, delete_timeout=2.0, watch_retry=0.01)
    await rt.ensure_org(make_org())
    yield rt
    await rt.close()


def test_it_is_an_agent_runtime(runtime: KubernetesRuntime) -> None:
    rt: AgentRuntime = runtime
    assert rt.name == "kubernetes"


async def test_ensure_org_creates_the_boundary_then_updates_it_in_place(fake: FakeGateway) -> None:
    rt = KubernetesRuntime(fake)
    await rt.ensure_org(make_org())
    assert fake.names("Namespace") == [NS]
    assert fake.names("NetworkPolicy", NS) == ["allow-dns", "allow-nats", "default-deny-all"]
    uid = fake.objects[("ResourceQuota", NS, "tenant-quota")]["metadata"]["uid"]
    await rt.ensure_org(make_org(plan="enterprise"))
    quota = fake.objects[("ResourceQuota", NS, "tenant-quota")]
    assert quota["metadata"]["uid"] == uid  # updated, not recreated
    assert quota["spec"]["hard"]["pods"] == "60"
    assert set(fake.verbs()) == {"apply Namespace", "apply ResourceQuota", "apply LimitRange",
                                 "apply NetworkPolicy", "apply ServiceAccount", "apply Role",
                                 "apply RoleBinding"}  # fmt: skip


async def test_ensure_org_rewrites_the_role_when_secrets_appear(fake: FakeGateway) -> None:
    rt = KubernetesRuntime(fake)
    grants = [SecretGrant("agent-ssh-*")]
    await rt.ensure_org(make_org(), grants=grants, secrets={})
    assert fake.objects[("Role", NS, "agent-secret-reader")]["rules"] == []
    await rt.ensure_org(make_org(), grants=grants, secrets={"agent-ssh-ci": b"k"})
    (rule,) = fake.objects[("Role", NS, "agent-secret-reader")]["rules"]
    assert rule["resourceNames"] == ["agent-ssh-ci"]
    await rt.delete_secret("acme-corp", "agent-ssh-ci")
    assert fake.names("Secret", NS) == []


async def test_prepare_org_reads_the_plan_from_the_tier_label(fake: FakeGateway) -> None:
    org = make_org(plan="free")
    await KubernetesRuntime(fake).prepare_org(org.slug, labels={**org.labels, **org.annotations})
    ns = fake.objects[("Namespace", None, NS)]
    assert ns["metadata"]["annotations"]["corral.dev/org-id"] == "org_abc123"
    assert fake.objects[("ResourceQuota", NS, "tenant-quota")]["spec"]["hard"]["pods"] == "3"


async def test_prepare_org_without_a_plan_uses_the_default_one(fake: FakeGateway) -> None:
    await KubernetesRuntime(fake, default_plan="free").prepare_org("acme-corp", labels={})
    assert fake.objects[("Namespace", None, NS)]["metadata"]["labels"]["tier"] == "free"


@pytest.mark.parametrize("org", ["Acme", "../etc", "a" * 60])
async def test_prepare_org_refuses_a_bad_slug(fake: FakeGateway, org: str) -> None:
    with pytest.raises(InvalidInput):
        await KubernetesRuntime(fake).prepare_org(org, labels={})
    assert fake.calls == []


async def test_prepare_org_refuses_an_unknown_plan(fake: FakeGateway) -> None:
    with pytest.raises(InvalidInput, match="platinum"):
        await KubernetesRuntime(fake).prepare_org("acme-corp", labels={"tier": "platinum"})
    assert fake.objects == {}


@pytest.mark.parametrize(
    ("org", "agent_id"), [("../x", "agent-a"), ("acme-corp", "a/../b"), ("acme-corp", "A")]
)
async def test_names_that_would_escape_an_api_path_are_refused_before_any_request(
    runtime: KubernetesRuntime, fake: FakeGateway, org: str, agent_id: str
) -> None:
    before = len(fake.calls)
    for call in (runtime.status, runtime.workspace_exists, runtime.delete_workspace, runtime.stop):
        with pytest.raises(InvalidInput):
            await call(org, agent_id)
    assert len(fake.calls) == before


async def test_start_creates_the_workspace_credentials_and_pod(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    spec = make_spec()
    status = await runtime.start(spec)
    assert status.phase is Phase.RUNNING
    assert (status.org, status.agent_id) == ("acme-corp", spec.agent_id)
    assert status.detail["namespace"] == NS
    assert fake.names("PersistentVolumeClaim", NS) == [f"workspace-{spec.agent_id}"]
    assert fake.names("Secret", NS) == [f"nats-creds-{spec.agent_id}"]
    assert fake.names("Pod", NS) == [spec.agent_id]
    assert await runtime.workspace_exists("acme-corp", spec.agent_id)
    assert (await runtime.status("acme-corp", spec.agent_id)).phase is Phase.RUNNING


async def test_starting_a_running_agent_again_is_a_conflict(runtime: KubernetesRuntime) -> None:
    await runtime.start(make_spec())
    with pytest.raises(Conflict, match="already running"):
        await runtime.start(make_spec())


async def test_a_pod_created_meanwhile_is_a_conflict_that_leaves_its_credentials(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    spec = make_spec()
    fake.fail_next("create", "Pod", Conflict('pods "x" already exists'))
    with pytest.raises(Conflict):
        await runtime.start(spec)
    assert fake.names("Secret", NS) == [f"nats-creds-{spec.agent_id}"]


async def test_a_workspace_created_meanwhile_is_used_as_it_is(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    fake.fail_next("create", "PersistentVolumeClaim", Conflict("already exists"))
    status = await runtime.start(make_spec())
    assert status.phase is Phase.RUNNING


async def test_a_failed_start_leaves_nothing_it_made_behind(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    spec = make_spec()
    fake.fail_next("create", "Pod", Unavailable("the API server is overloaded"))
    with pytest.raises(Unavailable):
        await runtime.start(spec)
    assert fake.names("Pod", NS) == []
    assert fake.names("Secret", NS) == []
    assert fake.names("PersistentVolumeClaim", NS) == []


async def test_a_failed_resume_keeps_the_existing_workspace(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    spec = make_spec()
    await runtime.start(spec)
    await runtime.stop("acme-corp", spec.agent_id)
    fake.fail_next("create", "Pod", Unavailable("the API server is overloaded"))
    with pytest.raises(Unavailable):
        await runtime.start(spec)
    assert await runtime.workspace_exists("acme-corp", spec.agent_id)


async def test_starting_in_an_org_that_was_never_prepared_is_not_found(fake: FakeGateway) -> None:
    rt = KubernetesRuntime(fake)
    with pytest.raises(NotFound, match="namespaces"):
        await rt.start(make_spec())


async def test_start_refuses_when_the_quota_has_no_pod_left(fake: FakeGateway) -> None:
    rt = KubernetesRuntime(fake, poll_interval=0.005)
    org = make_org(plan="free")  # 3 pods
    await rt.ensure_org(org)
    for i in range(3):
        await rt.start(make_spec(org, agent_id=f"agent-{i}"))
    with pytest.raises(QuotaExceeded, match="pod limit"):
        await rt.start(make_spec(org, agent_id="agent-3"))
    assert fake.names("PersistentVolumeClaim", NS) == [f"workspace-agent-{i}" for i in range(3)]


async def test_the_api_servers_own_quota_refusal_is_quota_exceeded(fake: FakeGateway) -> None:
    rt = KubernetesRuntime(fake, poll_interval=0.005, check_pod_quota=False)
    org = make_org(plan="free")
    await rt.ensure_org(org)
    for i in range(3):
        await rt.start(make_spec(org, agent_id=f"agent-{i}"))
    with pytest.raises(QuotaExceeded, match="exceeded quota"):
        await rt.start(make_spec(org, agent_id="agent-3"))
    assert fake.names("PersistentVolumeClaim", NS) == [f"workspace-agent-{i}" for i in range(3)]


async def test_stop_deletes_the_pod_keeps_the_workspace_and_waits_until_the_pod_is_gone(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    spec = make_spec()
    await runtime.start(spec)
    await runtime.stop("acme-corp", spec.agent_id, grace=3)
    assert fake.names("Pod", NS) == []  # really gone, not terminating
    calls = [c for c in fake.calls if c[0] in ("annotate", "delete") and c[1] == "Pod"]
    assert calls == [("annotate", "Pod", NS, spec.agent_id), ("delete", "Pod", NS, spec.agent_id)]
    assert fake.names("Secret", NS) == []  # credentials go with the pod
    assert await runtime.workspace_exists("acme-corp", spec.agent_id)
    assert (await runtime.status("acme-corp", spec.agent_id)).phase is Phase.ABSENT


async def test_stopping_an_agent_that_is_not_running_is_a_no_op(runtime: KubernetesRuntime) -> None:
    await runtime.stop("acme-corp", "agent-never-started")


async def test_resume_waits_for_a_pod_that_lingers_while_terminating(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    """Pause (delete the pod) and resume (create it again) race the kubelet: the API server
    refuses a pod whose namespace/name is still held by a terminating one."""
    spec = make_spec()
    await runtime.start(spec)
    first_uid = fake.objects[("Pod", NS, spec.agent_id)]["metadata"]["uid"]
    fake.linger = 0.2
    # someone (a drain, another replica) deletes the pod; it lingers while terminating
    await fake.delete("Pod", spec.agent_id, namespace=NS)
    with pytest.raises(Conflict):
        await fake.create(fake.objects[("Pod", NS, spec.agent_id)])
    status = await runtime.start(spec)
    assert status.phase is Phase.RUNNING
    pod = fake.objects[("Pod", NS, spec.agent_id)]
    assert pod["metadata"]["uid"] != first_uid
    assert "deletionTimestamp" not in pod["metadata"]
    waits = [c for c in fake.calls if c[:2] == ("get", "Pod")]
    assert len(waits) > 2  # it polled until the old pod was gone


async def test_pause_then_resume_keeps_the_workspace(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    spec = make_spec()
    await runtime.start(spec)
    claim_uid = fake.objects[("PersistentVolumeClaim", NS, f"workspace-{spec.agent_id}")][
        "metadata"
    ]["uid"]
    await runtime.stop("acme-corp", spec.agent_id)
    await runtime.start(spec)
    claim = fake.objects[("PersistentVolumeClaim", NS, f"workspace-{spec.agent_id}")]
    assert claim["metadata"]["uid"] == claim_uid
    assert fake.verbs("PersistentVolumeClaim").count("create PersistentVolumeClaim") == 1


async def test_a_finished_pod_is_replaced_on_start(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    spec = make_spec()
    await runtime.start(spec)
    fake.finish(NS, spec.agent_id, exit_code=1)
    assert (await runtime.status("acme-corp", spec.agent_id)).phase is Phase.CRASHED
    status = await runtime.start(spec)
    assert status.phase is Phase.RUNNING


async def test_stop_gives_up_when_the_pod_never_goes(fake: FakeGateway) -> None:
    fake.linger = 60
    rt = KubernetesRuntime(fake, poll_interval=0.005, delete_timeout=0.05)
    await rt.ensure_org(make_org())
    spec = make_spec()
    await rt.start(spec)
    with pytest.raises(Unavailable, match="still being deleted"):
        await rt.stop("acme-corp", spec.agent_id, grace=0)
    await rt.close()


@pytest.mark.parametrize(
    ("exit_code", "reason", "phase"),
    [
        (0, "Completed", Phase.EXITED),
        (1, "Error", Phase.CRASHED),
        (137, "OOMKilled", Phase.CRASHED),
    ],
)
async def test_status_follows_the_container(
    runtime: KubernetesRuntime, fake: FakeGateway, exit_code: int, reason: str, phase: Phase
) -> None:
    spec = make_spec()
    await runtime.start(spec)
    fake.finish(NS, spec.agent_id, exit_code=exit_code, reason=reason)
    status = await runtime.status("acme-corp", spec.agent_id)
    assert (status.phase, status.exit_code, status.detail["reason"]) == (phase, exit_code, reason)


async def test_a_pending_pod_is_starting(fake: FakeGateway) -> None:
    fake.pods_start = "Pending"
    rt = KubernetesRuntime(fake)
    await rt.ensure_org(make_org())
    spec = make_spec()
    status = await rt.start(spec)
    assert status.phase is Phase.STARTING
    assert status.detail["reason"] == "ContainerCreating"
    fake.run(NS, spec.agent_id)
    assert (await rt.status("acme-corp", spec.agent_id)).phase is Phase.RUNNING


async def collect(rt: KubernetesRuntime, into: list[RuntimeStatus]) -> None:
    async for end in rt.exits():
        into.append(end)


async def test_exits_report_crashes_and_exits_once_each(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    ends: list[RuntimeStatus] = []
    watcher = asyncio.create_task(collect(runtime, ends), name="collect-exits")
    try:
        await runtime.start(make_spec(agent_id="agent-a"))
        await runtime.start(make_spec(agent_id="agent-b"))
        fake.finish(NS, "agent-a", exit_code=2)
        fake.finish(NS, "agent-b", exit_code=0)
        await eventually(lambda: len(ends) == 2, timeout=2)
        assert {(e.agent_id, e.phase, e.exit_code) for e in ends} == {
            ("agent-a", Phase.CRASHED, 2),
            ("agent-b", Phase.EXITED, 0),
        }
        fake.drop_watches()  # the watch restarts and lists the finished pods again
        await eventually(lambda: ("watch", "Pod", None, "") in fake.calls[-3:], timeout=2)
        await runtime.start(make_spec(agent_id="agent-c"))
        fake.finish(NS, "agent-c", exit_code=3)
        await eventually(lambda: len(ends) == 3, timeout=2)
        assert ends[-1].agent_id == "agent-c"
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_a_stop_by_any_replica_is_not_reported_but_a_deletion_by_others_is(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    ends: list[RuntimeStatus] = []
    watcher = asyncio.create_task(collect(runtime, ends), name="collect-exits")
    other_replica = KubernetesRuntime(fake, poll_interval=0.005)
    try:
        for agent in ("agent-a", "agent-b", "agent-c"):
            await runtime.start(make_spec(agent_id=agent))
        await runtime.stop("acme-corp", "agent-a")
        await other_replica.stop("acme-corp", "agent-b")
        await fake.delete("Pod", "agent-c", namespace=NS)  # a drain, or by hand
        await eventually(lambda: len(ends) == 1, timeout=2)
        await eventually(lambda: fake.names("Pod", NS) == [], timeout=2)
        (end,) = ends
        assert (end.agent_id, end.phase, end.exit_code) == ("agent-c", Phase.EXITED, 0)
        assert end.detail["terminating"] == "true"
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_a_pod_that_vanishes_while_running_is_a_crash(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    ends: list[RuntimeStatus] = []
    watcher = asyncio.create_task(collect(runtime, ends), name="collect-exits")
    try:
        await eventually(lambda: ("watch", "Pod", None, "") in fake.calls, timeout=2)
        await runtime.start(make_spec(agent_id="agent-a"))
        fake.vanish(NS, "agent-a")  # a forced deletion, or its node lost
        await eventually(lambda: len(ends) == 1, timeout=2)
        (end,) = ends
        assert (end.agent_id, end.phase, end.detail["deleted"]) == (
            "agent-a",
            Phase.CRASHED,
            "true",
        )
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_replacing_a_crashed_pod_does_not_report_its_crash_again(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    ends: list[RuntimeStatus] = []
    await runtime.start(make_spec(agent_id="agent-a"))
    fake.finish(NS, "agent-a", exit_code=1)
    watcher = asyncio.create_task(collect(runtime, ends), name="collect-exits")
    try:
        await eventually(lambda: len(ends) == 1, timeout=2)  # listed when the watch starts
        await runtime.start(make_spec(agent_id="agent-a"))
        await runtime.stop("acme-corp", "agent-a")
        await runtime.start(make_spec(agent_id="agent-b"))
        fake.finish(NS, "agent-b", exit_code=0)
        await eventually(lambda: len(ends) == 2, timeout=2)
        assert [(e.agent_id, e.phase) for e in ends] == [
            ("agent-a", Phase.CRASHED),
            ("agent-b", Phase.EXITED),
        ]
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_exits_keep_watching_after_the_api_server_is_unavailable(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    fake.fail_next("watch", "Pod", Unavailable("connection refused"))
    ends: list[RuntimeStatus] = []
    watcher = asyncio.create_task(collect(runtime, ends), name="collect-exits")
    try:
        await runtime.start(make_spec(agent_id="agent-a"))
        fake.finish(NS, "agent-a", exit_code=1)
        await eventually(lambda: len(ends) == 1, timeout=2)
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_list_agents_finds_pods_in_every_org(fake: FakeGateway) -> None:
    rt = KubernetesRuntime(fake)
    a, b = make_org("org-a"), make_org("org-b")
    await rt.ensure_org(a)
    await rt.ensure_org(b)
    await rt.start(make_spec(a, agent_id="agent-1"))
    await rt.start(make_spec(b, agent_id="agent-2"))
    found = {(s.org, s.agent_id, s.phase) for s in await rt.list_agents()}
    assert found == {("org-a", "agent-1", Phase.RUNNING), ("org-b", "agent-2", Phase.RUNNING)}


async def test_logs_are_the_pods_tail_and_empty_once_it_is_gone(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    spec = make_spec()
    await runtime.start(spec)
    fake.logs[(NS, spec.agent_id)] = "".join(f"line {i}\n" for i in range(10))
    assert await runtime.logs("acme-corp", spec.agent_id, tail=2) == "line 8\nline 9\n"
    await runtime.stop("acme-corp", spec.agent_id)
    assert await runtime.logs("acme-corp", spec.agent_id) == ""


async def test_a_workspace_in_use_is_not_deleted(runtime: KubernetesRuntime) -> None:
    spec = make_spec()
    await runtime.start(spec)
    with pytest.raises(Conflict, match="stop it"):
        await runtime.delete_workspace("acme-corp", spec.agent_id)
    assert await runtime.workspace_exists("acme-corp", spec.agent_id)


async def test_deleting_a_crashed_agents_workspace_removes_its_pod_first(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    spec = make_spec()
    await runtime.start(spec)
    fake.finish(NS, spec.agent_id, exit_code=1)
    await runtime.delete_workspace("acme-corp", spec.agent_id)
    assert fake.names("Pod", NS) == []
    assert not await runtime.workspace_exists("acme-corp", spec.agent_id)


async def test_delete_workspace_removes_the_claim(runtime: KubernetesRuntime) -> None:
    spec = make_spec()
    await runtime.start(spec)
    await runtime.stop("acme-corp", spec.agent_id)
    await runtime.delete_workspace("acme-corp", spec.agent_id)
    assert not await runtime.workspace_exists("acme-corp", spec.agent_id)
    await runtime.delete_workspace("acme-corp", spec.agent_id)  # idempotent


async def test_remove_org_deletes_the_namespace_and_waits_for_it(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    await runtime.start(make_spec())
    await runtime.remove_org("acme-corp")
    assert fake.objects == {}
    await runtime.remove_org("acme-corp")  # idempotent
    await runtime.ensure_org(make_org())  # the name can be used again at once
    assert fake.names("Namespace") == [NS]


async def test_a_terminating_namespace_refuses_new_agents(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    fake.linger = 60
    await fake.delete("Namespace", NS)
    with pytest.raises(Conflict, match="being terminated"):
        await runtime.start(make_spec())


async def test_quota_status_reads_hard_and_used_as_the_seed_does(
    runtime: KubernetesRuntime,
) -> None:
    await runtime.start(make_spec(agent_id="agent-a"))
    await runtime.start(make_spec(agent_id="agent-b"))
    quota = await runtime.quota_status("acme-corp")
    assert quota.hard["pods"] == parse("15")
    assert quota.used["pods"] == parse("2")
    assert quota.used["requests.cpu"] == parse("1")
    assert quota.used["requests.memory"] == parse("4Gi")
    assert quota.used["persistentvolumeclaims"] == parse("2")
    wire = quota.to_wire()
    assert wire["org"] == "acme-corp"
    assert wire["used"] == {
        "requests.cpu": "1",
        "requests.memory": "4Gi",
        "limits.cpu": "4",
        "limits.memory": "16Gi",
        "persistentvolumeclaims": "2",
        "pods": "2",
    }


async def test_reconcile_quota_reports_where_corral_and_kubernetes_disagree(
    runtime: KubernetesRuntime,
) -> None:
    await runtime.start(make_spec(agent_id="agent-a"))
    agreed = {
        "requests.cpu": parse("500m"),
        "requests.memory": parse("2Gi"),
        "limits.cpu": parse("2"),
        "limits.memory": parse("8Gi"),
        "pods": parse("1"),
        "persistentvolumeclaims": parse("1"),
    }
    assert await runtime.reconcile_quota("acme-corp", agreed) == []
    drift = await runtime.reconcile_quota("acme-corp", {**agreed, "pods": parse("2")})
    assert drift == [QuotaDrift("pods", parse("2"), parse("1"))]
    assert str(drift[0]) == "pods: Corral counts 2, Kubernetes counts 1"


async def test_quota_status_of_an_unprepared_org_is_not_found(fake: FakeGateway) -> None:
    with pytest.raises(NotFound):
        await KubernetesRuntime(fake).quota_status("nobody")


async def test_close_closes_the_gateway(fake: FakeGateway) -> None:
    async with KubernetesRuntime(fake):
        pass
    assert fake.closed


def test_an_unschedulable_pod_says_why() -> None:
    *_, pod = agent_manifests("acme-corp", make_spec())
    pod["status"] = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ],
    }
    status = pod_status(pod)
    assert status.phase is Phase.STARTING
    assert status.detail["reason"] == "Unschedulable"
    assert "Insufficient" in status.detail["message"]


async def test_each_plan_runs_its_agents_under_its_runtime_class(fake: FakeGateway) -> None:
    rt = KubernetesRuntime(fake, runtime_classes={"free": "gvisor", "*": "kata"})
    await rt.ensure_org(make_org(plan="free"))
    await rt.start(make_spec())
    assert fake.objects[("Pod", NS, make_spec().agent_id)]["spec"]["runtimeClassName"] == "gvisor"
    await rt.stop("acme-corp", make_spec().agent_id, grace=0)
    await rt.ensure_org(make_org(plan="enterprise"))  # a plan change applies to the next start
    await rt.start(make_spec())
    assert fake.objects[("Pod", NS, make_spec().agent_id)]["spec"]["runtimeClassName"] == "kata"
    await rt.close()


async def test_without_runtime_classes_no_pod_names_one(
    runtime: KubernetesRuntime, fake: FakeGateway
) -> None:
    await runtime.start(make_spec())
    assert "runtimeClassName" not in fake.objects[("Pod", NS, make_spec().agent_id)]["spec"]


@pytest.mark.parametrize(
    ("classes", "match"), [({"platinum": "gvisor"}, "platinum"), ({"free": "Not_A_Name"}, "Not_A")]
)
def test_a_runtime_class_for_an_unknown_plan_or_with_a_bad_name_is_refused(
    fake: FakeGateway, classes: dict[str, str], match: str
) -> None:
    with pytest.raises(InvalidInput, match=match):
        KubernetesRuntime(fake, runtime_classes=classes)
