"""The Kubernetes runtime: each agent a Pod with a PVC in its organization's namespace.

Kubernetes does the work: the namespace is the tenant's boundary, ResourceQuota and LimitRange
hold it to its plan, NetworkPolicies cut it off from every other tenant, the kubelet runs and
kills the pods. This runtime only declares objects (server-side apply through a
:class:`~corral.runtime.kubernetes.gateway.K8sGateway`) and reads pods back.

Pausing deletes the pod and keeps the PVC; resuming recreates a pod of the same name, which the
API server refuses while the old one is still terminating, so :meth:`KubernetesRuntime.start`
waits until it is really gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from corral.domain.errors import (
    Conflict,
    CorralError,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    Unavailable,
)
from corral.domain.grants import SecretGrant
from corral.domain.ids import OrgId, OrgSlug
from corral.domain.plans import PLANS, Plan
from corral.domain.quantities import ZERO, Quantity, parse
from corral.domain.tenancy import Organization, namespace_for, validate_slug
from corral.runtime.base import LaunchSpec, Phase, RuntimeStatus
from corral.runtime.kubernetes import manifests, names
from corral.runtime.kubernetes.status import (
    STOP_ANNOTATION,
    QuotaDrift,
    QuotaStatus,
    end_of,
    pod_status,
    quantities,
    quota_drift,
)

if TYPE_CHECKING:  # the lightkube client is for whoever builds the gateway to import
    from corral.runtime.kubernetes.gateway import K8sGateway

__all__ = ["KubernetesRuntime", "QuotaDrift", "QuotaStatus"]

log = logging.getLogger(__name__)

_PLAN_KEYS = ("tier", "corral.dev/plan", "corral/plan")
_ORG_ID_KEYS = ("corral.dev/org-id", "org-id")


def _is_terminating(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _is_finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _namespace(org: str) -> str:
    """The org's namespace, once its slug is known to be safe in an API path."""
    return namespace_for(validate_slug(org))


def _check_agent(agent_id: str) -> str:
    """The agent id, once it is known to name a pod and its claim (and so be safe in a path)."""
    taken = (agent_id, names.workspace_claim_name(agent_id))
    if not all(names.is_dns1123_subdomain(name) for name in taken):
        raise InvalidInput(
            f"agent id {agent_id!r} cannot name a Kubernetes Pod", details={"agent_id": agent_id}
        )
    return agent_id


class KubernetesRuntime:
    """:class:`~corral.runtime.base.AgentRuntime` on a Kubernetes cluster.

    Args:
        gateway: the cluster (``LightkubeGateway`` in production, a fake in tests).
        storage_class: the workspaces' StorageClass; ``None`` or ``""`` uses the cluster's
            default.
        workspace_size: each workspace PVC's requested size.
        nats_namespace: where NATS runs; the org's NetworkPolicy allows egress there only.
        nats_port: the NATS client port.
        plans: the plans organizations may be on, by name.
        default_plan: the plan :meth:`prepare_org` uses when the labels name none.
        runtime_classes: plan name (``*``: any other) → the RuntimeClass its agents' Pods run
            under, e.g. gVisor's ``runsc`` or Kata: a kernel of their own per tenant plan.
        poll_interval: seconds between checks while waiting for an object to be gone.
        delete_timeout: seconds to wait, past the grace period, for a deletion to finish.
        watch_retry: seconds to wait before watching pods again after the watch broke.
        check_pod_quota: refuse to start an agent when the ResourceQuota's pods are all used,
            as the seed's controller does, before creating anything.
    """

    name = "kubernetes"

    def __init__(
        self,
        gateway: K8sGateway,
        *,
        storage_class: str | None = None,
        workspace_size: str = "10Gi",
        nats_namespace: str = "nats",
        nats_port: int = 4222,
        plans: Mapping[str, Plan] = PLANS,
        default_plan: str = "standard",
        poll_interval: float = 0.5,
        delete_timeout: float = 120.0,
        watch_retry: float = 1.0,
        check_pod_quota: bool = True,
        runtime_classes: Mapping[str, str] | None = None,
    ) -> None:
        parse(workspace_size)  # fail at construction, not at the first start
        classes = dict(runtime_classes or {})
        for plan_name, class_name in classes.items():
            if plan_name != "*" and plan_name not in plans:
                raise InvalidInput(f"a RuntimeClass is set for unknown plan {plan_name!r}")
            if not names.is_dns1123_subdomain(class_name):
                raise InvalidInput(f"RuntimeClass {class_name!r} is not a valid name")
        self._runtime_classes = classes
        if default_plan not in plans:
            raise InvalidInput(f"unknown default plan {default_plan!r}")
        self._gateway = gateway
        self._storage_class = storage_class or None
        self._workspace_size = workspace_size
        self._nats_namespace = nats_namespace
        self._nats_port = nats_port
        self._plans = plans
        self._default_plan = default_plan
        self._poll = poll_interval
        self._delete_timeout = delete_timeout
        self._watch_retry = watch_retry
        self._check_pod_quota = check_pod_quota

    async def __aenter__(self) -> KubernetesRuntime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- organizations -------------------------------------------------------------------

    async def ensure_org(
        self,
        org: Organization,
        *,
        grants: Sequence[SecretGrant] = (),
        secrets: Mapping[str, bytes] | None = None,
    ) -> None:
        """Apply the organization's namespace and everything in it (idempotent).

        Re-run it when the plan, the grants or the secrets change: the Role's ``resourceNames``
        are expanded from the grants against the secret names at this moment.
        """
        for obj in manifests.org_manifests(
            org,
            grants=grants,
            secrets=secrets,
            nats_namespace=self._nats_namespace,
            nats_port=self._nats_port,
        ):
            await self._gateway.apply(obj)

    async def prepare_org(self, org: str, *, labels: Mapping[str, str]) -> None:
        """Apply the org's boundary, its plan and id read from ``labels``.

        The plan is named by ``tier`` (the seed's namespace label) or ``corral.dev/plan``, else
        the runtime's default plan applies; the org id by ``corral.dev/org-id`` (pass
        ``{**org.labels, **org.annotations}``), else the slug stands in. Prefer
        :meth:`ensure_org`, which also carries the org's secrets and grants.

        Raises:
            InvalidInput: a bad slug or an unknown plan.
        """
        slug = validate_slug(org)
        tier = next((labels[k] for k in _PLAN_KEYS if k in labels), self._default_plan)
        plan = self._plans.get(tier)
        if plan is None:
            raise InvalidInput(f"unknown plan {tier!r}", details={"org": org, "plan": tier})
        org_id = next((labels[k] for k in _ORG_ID_KEYS if k in labels), slug)
        await self.ensure_org(Organization(OrgId(org_id), OrgSlug(slug), plan, datetime.now(UTC)))

    async def remove_org(self, org: str) -> None:
        """Delete the org's namespace (and with it every pod, PVC and secret) and wait for it
        to be gone, so the same name can be provisioned again."""
        namespace = _namespace(org)
        try:
            await self._gateway.delete("Namespace", namespace)
        except NotFound:
            return
        await self._wait_gone("Namespace", namespace, None, self._delete_timeout)

    async def delete_secret(self, org: str, name: str) -> None:
        """Remove one of the org's secrets (re-run :meth:`ensure_org` to update the Role)."""
        await self._delete_quietly("Secret", name, _namespace(org))

    # -- agents --------------------------------------------------------------------------

    async def start(self, spec: LaunchSpec) -> RuntimeStatus:
        """Create the workspace PVC if missing, (re)write the credentials Secret, create the Pod.

        A pod of the same name that is still terminating is waited out, and one that has
        finished is removed first: the API server refuses a second pod of the same name. If the
        pod cannot be created, the Secret and a PVC made by this call are removed again.

        Raises:
            InvalidInput: an org or agent name Kubernetes cannot hold.
            Conflict: the agent's pod exists and has not finished.
            QuotaExceeded: the org's ResourceQuota has no pod left.
            NotFound: the org's namespace does not exist (``prepare_org`` first).
            Unavailable: the cluster did not answer, or an old pod did not go in time.
        """
        namespace = _namespace(spec.org)
        claim, creds, pod = manifests.agent_manifests(
            spec.org,
            spec,
            storage_class=self._storage_class,
            workspace_size=self._workspace_size,
            runtime_class=await self._runtime_class(spec.org),
        )
        existing = await self._get("Pod", spec.agent_id, namespace)
        if existing is not None:
            if not _is_terminating(existing) and not _is_finished(existing):
                raise Conflict(
                    f"agent {spec.agent_id} is already running in {namespace}",
                    details={"org": spec.org, "agent_id": spec.agent_id},
                )
            if not _is_terminating(existing):
                await self._remove_pod(namespace, spec.agent_id, grace_period=0)
            await self._wait_gone("Pod", spec.agent_id, namespace, self._delete_timeout)
        if self._check_pod_quota:
            await self._require_pod_room(spec.org)
        made_claim = await self._ensure_claim(claim, namespace)
        await self._gateway.apply(creds)
        try:
            created = await self._gateway.create(pod)
        except Conflict:
            raise  # another start won the race; its pod uses these credentials
        except CorralError:
            await self._delete_quietly("Secret", creds["metadata"]["name"], namespace)
            if made_claim:
                await self._delete_quietly(
                    "PersistentVolumeClaim", claim["metadata"]["name"], namespace
                )
            raise
        return pod_status(created)

    async def stop(self, org: str, agent_id: str, *, grace: float = 5.0) -> None:
        """Mark the pod as stopped on purpose, delete it with ``grace`` seconds to exit, wait
        until it is gone and remove its credentials Secret. The workspace PVC stays."""
        namespace = _namespace(org)
        _check_agent(agent_id)
        if await self._get("Pod", agent_id, namespace) is not None:
            await self._remove_pod(namespace, agent_id, grace_period=max(0, math.ceil(grace)))
            await self._wait_gone("Pod", agent_id, namespace, grace + self._delete_timeout)
        await self._delete_quietly("Secret", names.creds_secret_name(agent_id), namespace)

    async def status(self, org: str, agent_id: str) -> RuntimeStatus:
        pod = await self._get("Pod", _check_agent(agent_id), _namespace(org))
        if pod is None:
            return RuntimeStatus(
                org=org, agent_id=agent_id, phase=Phase.ABSENT, limits="kubernetes"
            )
        return pod_status(pod)

    async def logs(self, org: str, agent_id: str, *, tail: int = 200) -> str:
        """The pod's last ``tail`` log lines; empty when the pod is gone or not started yet."""
        namespace = _namespace(org)
        _check_agent(agent_id)
        try:
            return await self._gateway.pod_logs(agent_id, namespace=namespace, tail=tail)
        except (NotFound, InvalidInput):  # gone, or its container not started yet (400)
            return ""

    async def workspace_exists(self, org: str, agent_id: str) -> bool:
        claim = names.workspace_claim_name(_check_agent(agent_id))
        found = await self._get("PersistentVolumeClaim", claim, _namespace(org))
        return found is not None and not _is_terminating(found)

    async def delete_workspace(self, org: str, agent_id: str) -> None:
        """Delete the workspace PVC and wait until it is gone.

        Raises:
            Conflict: the agent is running; stop it first.
        """
        namespace = _namespace(org)
        pod = await self._get("Pod", _check_agent(agent_id), namespace)
        if pod is not None:
            if not _is_finished(pod) and not _is_terminating(pod):
                raise Conflict(
                    f"agent {agent_id} is running: stop it before deleting its workspace",
                    details={"org": org, "agent_id": agent_id},
                )
            # a finished pod still mounts the claim, which Kubernetes keeps while it does
            await self._remove_pod(namespace, agent_id, grace_period=0)
            await self._wait_gone("Pod", agent_id, namespace, self._delete_timeout)
        claim = names.workspace_claim_name(agent_id)
        await self._delete_quietly("PersistentVolumeClaim", claim, namespace)
        await self._wait_gone("PersistentVolumeClaim", claim, namespace, self._delete_timeout)
        await self._delete_quietly("Secret", names.creds_secret_name(agent_id), namespace)

    async def list_agents(self) -> list[RuntimeStatus]:
        """Every agent pod Corral made, in every organization's namespace."""
        pods = await self._gateway.list_pods(labels=names.agent_selector())
        return [pod_status(p) for p in pods]

    async def exits(self) -> AsyncIterator[RuntimeStatus]:
        """Each agent's end that Corral did not ask for, once: exited, crashed, or deleted.

        Watches pods across namespaces and watches again after the connection broke; a watch
        starts by listing the pods that exist, so ends missed meanwhile are reported too. A pod
        stopped through :meth:`stop` (by any replica) is not reported.
        """
        reported: set[str] = set()
        while True:
            try:
                async for event, pod in self._gateway.watch_pods(labels=names.agent_selector()):
                    end = end_of(event, pod, reported)
                    if end is not None:
                        yield end
            except Unavailable as exc:
                log.warning("pod watch lost (%s); watching again", exc.message)
            await asyncio.sleep(self._watch_retry)

    # -- quota ---------------------------------------------------------------------------

    async def quota_status(self, org: str) -> QuotaStatus:
        """The org's ResourceQuota ``status.hard``/``status.used``, as the seed reads it.

        Before the quota controller has counted, ``used`` is empty and ``hard`` comes from the
        spec.

        Raises:
            NotFound: the org has no ResourceQuota (not prepared).
        """
        quota = await self._gateway.get(
            "ResourceQuota", names.QUOTA_NAME, namespace=_namespace(org)
        )
        status = quota.get("status") or {}
        hard = status.get("hard") or (quota.get("spec") or {}).get("hard")
        return QuotaStatus(org=org, hard=quantities(hard), used=quantities(status.get("used")))

    async def reconcile_quota(
        self, org: str, corral_usage: Mapping[str, Quantity]
    ) -> list[QuotaDrift]:
        """Compare Corral's own count of the org's usage with the cluster's; empty when they
        agree. Differences are logged; deciding what to do about them is the reconciler's."""
        drift = quota_drift(await self.quota_status(org), corral_usage)
        for d in drift:
            log.warning("quota drift in org %s: %s", org, d)
        return drift

    async def close(self) -> None:
        await self._gateway.close()

    # -- helpers -------------------------------------------------------------------------

    async def _ensure_claim(self, claim: Mapping[str, Any], namespace: str) -> bool:
        """Create the workspace claim unless it exists; whether this call made it."""
        name = claim["metadata"]["name"]
        found = await self._get("PersistentVolumeClaim", name, namespace)
        if found is not None and _is_terminating(found):
            await self._wait_gone("PersistentVolumeClaim", name, namespace, self._delete_timeout)
            found = None
        if found is not None:
            return False
        try:
            await self._gateway.create(claim)
        except Conflict:
            return False  # created meanwhile: it is the workspace all the same
        return True

    async def _require_pod_room(self, org: str) -> None:
        try:
            quota = await self.quota_status(org)
        except NotFound:
            return  # no quota object: creating the pod will say what is missing
        used = quota.used.get("pods", ZERO)
        hard = quota.hard.get("pods")
        if hard is not None and used >= hard:
            raise QuotaExceeded(
                f"organization {org} has reached its pod limit ({hard.render()})",
                details={
                    "resource": "pods",
                    "asked": "1",
                    "used": used.render(),
                    "allowed": hard.render(),
                },
            )

    async def _remove_pod(self, namespace: str, name: str, *, grace_period: int) -> None:
        """Mark the pod as removed on purpose (so no watcher reports its end), then delete it."""
        with contextlib.suppress(NotFound):  # gone meanwhile
            await self._gateway.annotate(
                "Pod",
                name,
                namespace=namespace,
                annotations={STOP_ANNOTATION: datetime.now(UTC).isoformat()},
            )
            await self._gateway.delete("Pod", name, namespace=namespace, grace_period=grace_period)

    async def _runtime_class(self, org: str) -> str | None:
        """The RuntimeClass for ``org``'s plan, read from its namespace's ``tier`` label (the
        plan may have changed since the runtime last saw the org); None when none is set."""
        if not self._runtime_classes:
            return None
        namespace = await self._get("Namespace", namespace_for(org), None)
        labels = (namespace or {}).get("metadata", {}).get("labels", {}) or {}
        tier = next((labels[k] for k in _PLAN_KEYS if k in labels), self._default_plan)
        return self._runtime_classes.get(tier, self._runtime_classes.get("*"))

    async def _get(self, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        try:
            return await self._gateway.get(kind, name, namespace=namespace)
        except NotFound:
            return None

    async def _delete_quietly(self, kind: str, name: str, namespace: str | None) -> None:
        with contextlib.suppress(NotFound):
            await self._gateway.delete(kind, name, namespace=namespace)

    async def _wait_gone(self, kind: str, name: str, namespace: str | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while await self._get(kind, name, namespace) is not None:
            if time.monotonic() >= deadline:
                where = f"{namespace}/{name}" if namespace else name
                raise Unavailable(
                    f"{kind} {where} is still being deleted after {timeout:.0f}s",
                    details={"kind": kind, "name": name, "namespace": namespace or ""},
                )
            await asyncio.sleep(self._poll)
