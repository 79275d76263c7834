"""Admission: LimitRange defaulting and validation, then the org's ResourceQuota.

The same rules a Kubernetes API server applies to a pod in the org's namespace, applied by
Corral before anything is created, so a refused agent leaves nothing behind in any runtime.
Every refusal names the resource and says how much was asked, used and allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from corral.domain.errors import InvalidInput, QuotaExceeded
from corral.domain.plans import QUOTA_RESOURCES, LimitRange, Plan
from corral.domain.quantities import ZERO, Quantity

__all__ = [
    "AdmittedResources",
    "ContainerRequest",
    "Usage",
    "UsageSnapshot",
    "admit",
    "apply_limit_range",
    "charge_for",
    "check_quota",
    "empty_usage",
]

Usage = Mapping[str, Quantity]


class UsageSnapshot:
    """What an org uses now: quota resources, agents and GPUs (as the ledger counts them)."""

    __slots__ = ("agents", "gpus", "used")

    def __init__(self, used: dict[str, Quantity], agents: int, gpus: int) -> None:
        self.used = used
        self.agents = agents
        self.gpus = gpus


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    """What a user asked for; any field may be omitted."""

    cpu_request: Quantity | None = None
    cpu_limit: Quantity | None = None
    memory_request: Quantity | None = None
    memory_limit: Quantity | None = None
    gpu: int = 0


@dataclass(frozen=True, slots=True)
class AdmittedResources:
    """A container's resources after defaulting: every field set."""

    cpu_request: Quantity
    cpu_limit: Quantity
    memory_request: Quantity
    memory_limit: Quantity
    gpu: int = 0

    def to_wire(self) -> dict[str, object]:
        return {
            "requests": {"cpu": self.cpu_request.render(), "memory": self.memory_request.render()},
            "limits": {"cpu": self.cpu_limit.render(), "memory": self.memory_limit.render()},
            "gpu": self.gpu,
        }


def _refuse(resource: str, asked: Quantity, used: Quantity, allowed: Quantity, why: str) -> None:
    raise QuotaExceeded(
        f"{resource}: {why} (asked {asked.render()}, used {used.render()}, "
        f"allowed {allowed.render()})",
        details={
            "resource": resource,
            "asked": asked.render(),
            "used": used.render(),
            "allowed": allowed.render(),
        },
    )


def apply_limit_range(req: ContainerRequest, lr: LimitRange) -> AdmittedResources:
    """Default and validate one container as a LimitRange of type Container does.

    A missing limit takes ``default``; a missing request takes the limit when one was given
    (API defaulting), else ``defaultRequest``. Requests above ``max`` and requests above
    limits are refused.

    Raises:
        QuotaExceeded: a value above the limit range's ``max``.
        InvalidInput: a request above its limit.
    """
    cpu_limit = req.cpu_limit if req.cpu_limit is not None else lr.default_cpu
    mem_limit = req.memory_limit if req.memory_limit is not None else lr.default_memory
    if req.cpu_request is not None:
        cpu_request = req.cpu_request
    elif req.cpu_limit is not None:
        cpu_request = req.cpu_limit
    else:
        cpu_request = lr.default_request_cpu
    if req.memory_request is not None:
        memory_request = req.memory_request
    elif req.memory_limit is not None:
        memory_request = req.memory_limit
    else:
        memory_request = lr.default_request_memory
    if req.gpu < 0:
        raise InvalidInput("gpu must not be negative", details={"gpu": req.gpu})
    for resource, value, maximum in (
        ("limits.cpu", cpu_limit, lr.max_cpu),
        ("requests.cpu", cpu_request, lr.max_cpu),
        ("limits.memory", mem_limit, lr.max_memory),
        ("requests.memory", memory_request, lr.max_memory),
    ):
        if value > maximum:
            _refuse(resource, value, ZERO, maximum, "above the limit range's per-container max")
    for name, request, limit, given, field, maximum in (
        ("cpu", cpu_request, cpu_limit, req.cpu_limit, "cpuLimit", lr.max_cpu),
        ("memory", memory_request, mem_limit, req.memory_limit, "memoryLimit", lr.max_memory),
    ):
        if request > limit:
            why = f"{name} request {request.render()} is above its limit {limit.render()}"
            if given is None:  # the limit came from the plan: say so, and how to raise it
                why += (
                    f" (the plan's default {name} limit, as none was given; give a higher one "
                    f"with {field}, `--{name}-limit` on the command line, up to the "
                    f"per-container max {maximum.render()})"
                )
            raise InvalidInput(
                why,
                details={
                    "resource": name,
                    "request": request.render(),
                    "limit": limit.render(),
                    "limitDefaulted": given is None,
                },
            )
    return AdmittedResources(cpu_request, cpu_limit, memory_request, mem_limit, req.gpu)


def empty_usage() -> dict[str, Quantity]:
    return dict.fromkeys(QUOTA_RESOURCES, ZERO)


def charge_for(
    res: AdmittedResources, *, pod: bool = True, pvc: bool = True
) -> dict[str, Quantity]:
    """What one agent holds against the quota: a running one its pod and PVC, a paused one
    only its PVC (its workspace)."""
    charge = empty_usage()
    if pod:
        charge["requests.cpu"] = res.cpu_request
        charge["requests.memory"] = res.memory_request
        charge["limits.cpu"] = res.cpu_limit
        charge["limits.memory"] = res.memory_limit
        charge["pods"] = Quantity.of(1)
    if pvc:
        charge["persistentvolumeclaims"] = Quantity.of(1)
    return charge


def check_quota(
    plan: Plan,
    used: Usage,
    charge: Usage,
    *,
    agents_used: int = 0,
    new_agents: int = 0,
    gpus_used: int = 0,
    new_gpus: int = 0,
) -> None:
    """Refuse ``charge`` if, added to ``used``, it would exceed the plan's hard limits.

    Raises:
        QuotaExceeded: naming the first resource that does not fit.
    """
    for resource in QUOTA_RESOURCES:
        asked = charge.get(resource, ZERO)
        if asked == ZERO:
            continue
        have = used.get(resource, ZERO)
        hard = plan.quota[resource]
        if have + asked > hard:
            _refuse(resource, asked, have, hard, "exceeds the organization's quota")
    if new_agents and agents_used + new_agents > plan.agent_limit:
        _refuse(
            "agents",
            Quantity.of(new_agents),
            Quantity.of(agents_used),
            Quantity.of(plan.agent_limit),
            f"the {plan.name} plan's agent limit is reached",
        )
    if new_gpus and gpus_used + new_gpus > plan.gpu_limit:
        _refuse(
            "gpu",
            Quantity.of(new_gpus),
            Quantity.of(gpus_used),
            Quantity.of(plan.gpu_limit),
            f"the {plan.name} plan allows {plan.gpu_limit} GPUs",
        )


def admit(
    plan: Plan, req: ContainerRequest, used: Usage, *, agents_used: int, gpus_used: int = 0
) -> AdmittedResources:
    """Default, validate and quota-check a new agent's container in one step."""
    res = apply_limit_range(req, plan.limit_range)
    check_quota(
        plan,
        used,
        charge_for(res),
        agents_used=agents_used,
        new_agents=1,
        gpus_used=gpus_used,
        new_gpus=res.gpu,
    )
    return res
