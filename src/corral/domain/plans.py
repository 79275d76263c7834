"""Plans: the single source of a tenant's limits.

A plan is compiled into Corral's own admission, the Kubernetes ResourceQuota and LimitRange,
the NATS account JWT, the scheduler's weights and the API's rate limiter. ``standard`` carries
the seed's numbers exactly but for the bus: its JetStream is file storage only (no memory
reservation) and sized to what its two streams and its object store hold (INBOX + EVENTS +
OBJECTS), because the server sums
every account's reservation against its caps and a handful of generous tenants would fill
it; ``free`` and ``enterprise`` are scaled around it (see README).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from corral.domain.errors import InvalidInput
from corral.domain.policies import DEFAULT_TASK_POLICY, RetryPolicy, TaskPolicy
from corral.domain.quantities import Quantity, parse

__all__ = [
    "QUOTA_RESOURCES",
    "BusLimits",
    "LimitRange",
    "Plan",
    "PLANS",
    "get_plan",
    "plan_from_wire",
    "register",
]

#: The ResourceQuota keys Corral enforces, in the order they are shown.
QUOTA_RESOURCES: tuple[str, ...] = (
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
    "pods",
    "persistentvolumeclaims",
)

_MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LimitRange:
    """Per-container defaults and maximum, as a Kubernetes LimitRange of type Container."""

    default_cpu: Quantity
    default_memory: Quantity
    default_request_cpu: Quantity
    default_request_memory: Quantity
    max_cpu: Quantity
    max_memory: Quantity


@dataclass(frozen=True, slots=True)
class BusLimits:
    """NATS account limits for one organization.

    The ingress budget is what the org's agents together may publish into the shared server,
    sustained over a few seconds (short bursts above it are allowed): NATS has no per-connection
    rate limit, and one tenant's flood would otherwise slow the server for every tenant. The
    control plane measures it and takes an agent over it off the bus (``corral.control.ingress``).
    """

    max_connections: int
    max_payload: int  # bytes
    jetstream_memory: int  # bytes reserved in the server's memory store (0: none, file only)
    jetstream_storage: int  # bytes reserved in the server's file store: INBOX + EVENTS + OBJECTS
    max_streams: int
    max_consumers: int
    inbox_max_bytes: int  # the org's inbox work-queue stream
    events_max_bytes: int = 4 * _MiB  # the org's EVENTS stream: what its agents report
    ingress_bytes_per_second: int = 8 * _MiB  # what its agents may publish, all together
    ingress_msgs_per_second: int = 50_000
    #: the org's object store (big payloads and results; see corral.domain.objects); 0: none
    objects_max_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    quota: Mapping[str, Quantity]
    limit_range: LimitRange
    agent_limit: int
    plan_boost: int
    fair_share_weight: int
    bus: BusLimits
    api_rate_per_second: float
    api_burst: int
    idle_timeout_seconds: float
    gpu_limit: int = 0
    #: how long a finished task (and its history) is kept before it is pruned
    task_retention_seconds: float = 7 * 86400.0
    #: how many of its tasks may wait at once (queued or backing off); past it, a submit or a
    #: delegation is refused, so one org's backlog cannot grow the platform's without bound
    max_queued_tasks: int = 100_000
    description: str = field(default="")
    #: what a task of this org may cost when its submitter does not say (retries, timeouts)
    task_policy: TaskPolicy = DEFAULT_TASK_POLICY
    #: the largest payload or result of one task: larger than a bus message, it travels
    #: through the org's object store (at most ``bus.objects_max_bytes``)
    max_object_bytes: int = 64 * _MiB

    @property
    def max_document_bytes(self) -> int:
        """The largest payload or result a task of this plan may have: its
        ``max_object_bytes`` if it has an object store, else what one message carries."""
        inline = self.bus.max_payload - 1024  # corral.domain.objects.ENVELOPE
        if self.bus.objects_max_bytes <= 0:
            return inline
        return max(inline, min(self.max_object_bytes, self.bus.objects_max_bytes))

    def to_wire(self) -> dict[str, object]:
        lr = self.limit_range
        return {
            "name": self.name,
            "description": self.description,
            "quota": {k: v.render() for k, v in self.quota.items()},
            "limitRange": {
                "default": {"cpu": lr.default_cpu.render(), "memory": lr.default_memory.render()},
                "defaultRequest": {
                    "cpu": lr.default_request_cpu.render(),
                    "memory": lr.default_request_memory.render(),
                },
                "max": {"cpu": lr.max_cpu.render(), "memory": lr.max_memory.render()},
            },
            "agentLimit": self.agent_limit,
            "gpuLimit": self.gpu_limit,
            "planBoost": self.plan_boost,
            "fairShareWeight": self.fair_share_weight,
            "bus": {
                "maxConnections": self.bus.max_connections,
                "maxPayload": self.bus.max_payload,
                "jetstreamMemory": self.bus.jetstream_memory,
                "jetstreamStorage": self.bus.jetstream_storage,
                "maxStreams": self.bus.max_streams,
                "maxConsumers": self.bus.max_consumers,
                "inboxMaxBytes": self.bus.inbox_max_bytes,
                "eventsMaxBytes": self.bus.events_max_bytes,
                "ingressBytesPerSecond": self.bus.ingress_bytes_per_second,
                "ingressMessagesPerSecond": self.bus.ingress_msgs_per_second,
                "objectsMaxBytes": self.bus.objects_max_bytes,
            },
            "apiRatePerSecond": self.api_rate_per_second,
            "apiBurst": self.api_burst,
            "idleTimeoutSeconds": self.idle_timeout_seconds,
            "taskRetentionSeconds": self.task_retention_seconds,
            "maxQueuedTasks": self.max_queued_tasks,
            "taskDefaults": self.task_policy.to_wire(),
            "maxObjectBytes": self.max_object_bytes,
        }


def _quota(
    cpu: str, mem: str, lcpu: str, lmem: str, pods: int, pvcs: int
) -> Mapping[str, Quantity]:
    return MappingProxyType(
        {
            "requests.cpu": parse(cpu),
            "requests.memory": parse(mem),
            "limits.cpu": parse(lcpu),
            "limits.memory": parse(lmem),
            "pods": parse(str(pods)),
            "persistentvolumeclaims": parse(str(pvcs)),
        }
    )


def _lr(dc: str, dm: str, rc: str, rm: str, mc: str, mm: str) -> LimitRange:
    return LimitRange(parse(dc), parse(dm), parse(rc), parse(rm), parse(mc), parse(mm))


FREE = Plan(
    name="free",
    description="Try it out: 2 agents, small containers, no priority boost.",
    quota=_quota("2", "4Gi", "4", "8Gi", 3, 3),
    limit_range=_lr("1000m", "2Gi", "250m", "512Mi", "2000m", "4Gi"),
    agent_limit=2,
    plan_boost=0,
    fair_share_weight=1,
    bus=BusLimits(
        20, 256 * 1024, 0, 24 * _MiB, 4, 32, 4 * _MiB, 4 * _MiB, 2 * _MiB, 10_000, 16 * _MiB
    ),
    api_rate_per_second=5.0,
    api_burst=20,
    idle_timeout_seconds=300.0,
    task_retention_seconds=86400.0,
    max_queued_tasks=10_000,
    task_policy=TaskPolicy(RetryPolicy(max_attempts=3), run_timeout=3600.0),
    max_object_bytes=8 * _MiB,
)

STANDARD = Plan(
    name="standard",
    description="The seed's tenant: 10 agents, 15 pods, 10 CPUs requested.",
    quota=_quota("10", "40Gi", "20", "80Gi", 15, 20),
    limit_range=_lr("2000m", "8Gi", "500m", "2Gi", "4000m", "16Gi"),
    agent_limit=10,
    plan_boost=1,
    fair_share_weight=2,
    bus=BusLimits(
        100, 1024 * 1024, 0, 160 * _MiB, 8, 128, 16 * _MiB, 16 * _MiB, 8 * _MiB, 50_000, 128 * _MiB
    ),
    api_rate_per_second=20.0,
    api_burst=50,
    idle_timeout_seconds=900.0,
)

ENTERPRISE = Plan(
    name="enterprise",
    description="Large tenants: 50 agents, GPUs, the highest boost and weight.",
    quota=_quota("40", "160Gi", "80", "320Gi", 60, 100),
    limit_range=_lr("2000m", "8Gi", "500m", "2Gi", "8000m", "32Gi"),
    agent_limit=50,
    plan_boost=2,
    fair_share_weight=4,
    bus=BusLimits(
        500,
        1024 * 1024,
        0,
        768 * _MiB,
        32,
        512,
        128 * _MiB,
        128 * _MiB,
        32 * _MiB,
        200_000,
        512 * _MiB,
    ),
    api_rate_per_second=100.0,
    api_burst=200,
    idle_timeout_seconds=3600.0,
    gpu_limit=4,
    task_retention_seconds=30 * 86400.0,
    max_queued_tasks=1_000_000,
    task_policy=TaskPolicy(RetryPolicy(), run_timeout=24 * 3600.0),
    max_object_bytes=256 * _MiB,
)

_REGISTRY: dict[str, Plan] = {p.name: p for p in (FREE, STANDARD, ENTERPRISE)}
#: Every known plan: the three built in, plus any an operator registered (a live view).
PLANS: Mapping[str, Plan] = MappingProxyType(_REGISTRY)


def register(plan: Plan) -> None:
    """Add an operator-defined plan (or replace one of the same name)."""
    if plan.plan_boost < 0 or plan.fair_share_weight <= 0 or plan.agent_limit < 0:
        raise InvalidInput(f"plan {plan.name!r}: boost ≥ 0, weight > 0 and agent limit ≥ 0")
    _REGISTRY[plan.name] = plan


def plan_from_wire(d: Mapping[str, Any]) -> Plan:
    """A plan from the shape :meth:`Plan.to_wire` writes (missing fields: ``standard``'s).

    Raises:
        InvalidInput: a bad quantity, a missing name or an unknown field.
    """
    base = STANDARD
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("a plan needs a 'name'")
    known = set(base.to_wire())
    unknown = set(d) - known
    if unknown:
        raise InvalidInput(f"plan {name!r}: unknown fields {sorted(unknown)}")
    quota = dict(base.quota)
    for key, value in dict(d.get("quota", {})).items():
        if key not in QUOTA_RESOURCES:
            raise InvalidInput(f"plan {name!r}: unknown quota resource {key!r}")
        quota[key] = parse(str(value))
    lr_in = dict(d.get("limitRange", {}))
    lr = base.limit_range

    def q(section: str, key: str, default: Quantity) -> Quantity:
        value = dict(lr_in.get(section, {})).get(key)
        return default if value is None else parse(str(value))

    limit_range = LimitRange(
        q("default", "cpu", lr.default_cpu),
        q("default", "memory", lr.default_memory),
        q("defaultRequest", "cpu", lr.default_request_cpu),
        q("defaultRequest", "memory", lr.default_request_memory),
        q("max", "cpu", lr.max_cpu),
        q("max", "memory", lr.max_memory),
    )
    bus_in = dict(d.get("bus", {}))
    b = base.bus
    bus = BusLimits(
        int(bus_in.get("maxConnections", b.max_connections)),
        int(bus_in.get("maxPayload", b.max_payload)),
        int(bus_in.get("jetstreamMemory", b.jetstream_memory)),
        int(bus_in.get("jetstreamStorage", b.jetstream_storage)),
        int(bus_in.get("maxStreams", b.max_streams)),
        int(bus_in.get("maxConsumers", b.max_consumers)),
        int(bus_in.get("inboxMaxBytes", b.inbox_max_bytes)),
        int(bus_in.get("eventsMaxBytes", b.events_max_bytes)),
        int(bus_in.get("ingressBytesPerSecond", b.ingress_bytes_per_second)),
        int(bus_in.get("ingressMessagesPerSecond", b.ingress_msgs_per_second)),
        int(bus_in.get("objectsMaxBytes", b.objects_max_bytes)),
    )
    defaults = d.get("taskDefaults")
    if defaults is not None and not isinstance(defaults, dict):
        raise InvalidInput(f"plan {name!r}: taskDefaults must be a mapping")
    task_policy = TaskPolicy.from_wire(defaults, base=base.task_policy)
    try:
        return Plan(
            name=name,
            description=str(d.get("description", "")),
            quota=MappingProxyType(quota),
            limit_range=limit_range,
            agent_limit=int(d.get("agentLimit", base.agent_limit)),
            plan_boost=int(d.get("planBoost", base.plan_boost)),
            fair_share_weight=int(d.get("fairShareWeight", base.fair_share_weight)),
            bus=bus,
            api_rate_per_second=float(d.get("apiRatePerSecond", base.api_rate_per_second)),
            api_burst=int(d.get("apiBurst", base.api_burst)),
            idle_timeout_seconds=float(d.get("idleTimeoutSeconds", base.idle_timeout_seconds)),
            task_retention_seconds=float(
                d.get("taskRetentionSeconds", base.task_retention_seconds)
            ),
            max_queued_tasks=int(d.get("maxQueuedTasks", base.max_queued_tasks)),
            gpu_limit=int(d.get("gpuLimit", base.gpu_limit)),
            task_policy=task_policy,
            max_object_bytes=int(d.get("maxObjectBytes", base.max_object_bytes)),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"plan {name!r}: {exc}") from exc


def get_plan(name: str) -> Plan:
    """The plan called ``name``.

    Raises:
        InvalidInput: no such plan; the message lists the known ones.
    """
    try:
        return PLANS[name]
    except KeyError:
        known = ", ".join(PLANS)
        raise InvalidInput(
            f"unknown plan {name!r}: choose one of {known}", details={"plan": name}
        ) from None
