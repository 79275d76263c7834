"""Reading agent pods and quotas back: what a pod says of its agent, what a quota says of use.

Pure functions over the plain dicts the gateway returns, shared by the runtime's ``status``,
``list_agents`` and ``exits``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from corral.domain.plans import QUOTA_RESOURCES
from corral.domain.quantities import ZERO, Quantity, parse
from corral.runtime.base import Phase, RuntimeStatus
from corral.runtime.kubernetes import names

__all__ = [
    "STOP_ANNOTATION",
    "QuotaDrift",
    "QuotaStatus",
    "end_of",
    "pod_status",
    "quantities",
    "quota_drift",
]

#: Set on a pod before Corral deletes it, so that every replica reads its end as asked for.
STOP_ANNOTATION = "corral.dev/stop-requested"


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """An organization's ResourceQuota as the cluster counts it."""

    org: str
    hard: Mapping[str, Quantity]
    used: Mapping[str, Quantity]

    def to_wire(self) -> dict[str, object]:
        return {
            "org": self.org,
            "hard": {k: v.render() for k, v in self.hard.items()},
            "used": {k: v.render() for k, v in self.used.items()},
        }


@dataclass(frozen=True, slots=True)
class QuotaDrift:
    """One resource whose usage Corral and the cluster count differently."""

    resource: str
    corral: Quantity
    kubernetes: Quantity

    def __str__(self) -> str:
        return (
            f"{self.resource}: Corral counts {self.corral.render()}, "
            f"Kubernetes counts {self.kubernetes.render()}"
        )


def quota_drift(status: QuotaStatus, corral_usage: Mapping[str, Quantity]) -> list[QuotaDrift]:
    """The quota resources whose usage differs between Corral's store and the cluster."""
    drift = []
    for resource in QUOTA_RESOURCES:
        ours = corral_usage.get(resource, ZERO)
        theirs = status.used.get(resource, ZERO)
        if ours != theirs:
            drift.append(QuotaDrift(resource, ours, theirs))
    return drift


def quantities(values: Mapping[str, Any] | None) -> dict[str, Quantity]:
    return {k: parse(str(v)) for k, v in (values or {}).items()}


def _agent_container(status: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = status.get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == names.CONTAINER_NAME:
            return dict(cs)
    return dict(statuses[0]) if statuses else {}


def pod_status(pod: Mapping[str, Any]) -> RuntimeStatus:
    """What a pod says of its agent.

    ``Pending`` is starting; ``Running`` is running; ``Succeeded`` or a container that exited 0
    is exited; ``Failed`` or a container that exited non-zero is crashed, unless Corral asked
    for the stop (the pod carries ``corral.dev/stop-requested``), which is an exit. A pod being
    deleted whose container still runs is still running.
    """
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    stopped = STOP_ANNOTATION in annotations
    namespace = meta.get("namespace") or ""
    org = labels.get(names.LABEL_TENANT) or namespace.removeprefix("org-")
    agent_id = annotations.get(names.ANNOTATION_AGENT_ID) or meta.get("name", "")
    status = pod.get("status") or {}
    k8s_phase = status.get("phase") or "Pending"
    container = _agent_container(status)
    state = container.get("state") or {}
    terminated = state.get("terminated")
    waiting = state.get("waiting")
    detail = {"namespace": namespace, "pod": meta.get("name", ""), "pod_phase": k8s_phase}
    if node := (pod.get("spec") or {}).get("nodeName"):
        detail["node"] = node
    if meta.get("deletionTimestamp"):
        detail["terminating"] = "true"
    exit_code: int | None = None
    reason = status.get("reason") or ""
    message = status.get("message") or ""
    if terminated:
        exit_code = int(terminated.get("exitCode", 0))
        reason = terminated.get("reason") or reason
        message = terminated.get("message") or message
    elif waiting:
        reason = waiting.get("reason") or reason
        message = waiting.get("message") or message
    for condition in status.get("conditions") or []:
        # why a pod is not running yet (Unschedulable), or why it is going (DisruptionTarget)
        bad = condition.get("type") == "DisruptionTarget" and condition.get("status") == "True"
        bad = bad or (
            condition.get("type") == "PodScheduled" and condition.get("status") == "False"
        )
        if bad and not reason:
            reason = condition.get("reason") or condition.get("type", "")
            message = condition.get("message") or message
    if reason:
        detail["reason"] = reason
    if message:
        detail["message"] = message
    if k8s_phase == "Succeeded" or (terminated and exit_code == 0):
        phase = Phase.EXITED
        exit_code = 0 if exit_code is None else exit_code
    elif k8s_phase == "Failed" or terminated:
        phase = Phase.EXITED if stopped else Phase.CRASHED
    elif k8s_phase == "Running":
        phase = Phase.RUNNING
    else:  # Pending, Unknown
        phase = Phase.STARTING
    return RuntimeStatus(
        org=org,
        agent_id=agent_id,
        phase=phase,
        exit_code=exit_code,
        limits="kubernetes",
        detail=MappingProxyType(detail),
    )


def end_of(event: str, pod: Mapping[str, Any], reported: set[str]) -> RuntimeStatus | None:
    """The end this watch event reports, if it is one not reported yet and not asked for."""
    meta = pod.get("metadata") or {}
    uid = meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"
    if STOP_ANNOTATION in (meta.get("annotations") or {}):
        return None
    status = pod_status(pod)
    if event == "DELETED":
        if uid in reported:
            reported.discard(uid)
            return None
        if status.phase in (Phase.EXITED, Phase.CRASHED):
            return status
        # gone while running, and not by Corral: evicted, preempted, node lost, deleted by hand
        return RuntimeStatus(
            org=status.org,
            agent_id=status.agent_id,
            phase=Phase.CRASHED,
            exit_code=status.exit_code,
            limits=status.limits,
            detail=MappingProxyType({**status.detail, "deleted": "true"}),
        )
    if status.phase in (Phase.EXITED, Phase.CRASHED) and uid not in reported:
        reported.add(uid)
        return status
    return None
