"""Prometheus metrics. Gauges describing state (agents, tasks, quota, measured usage) are
collected from a snapshot the control plane refreshes; event-driven series (dispatch latency,
bus and vault errors) are updated as things happen.

The seed's two questions, over these series::

    # running agents per organization
    sum by (org) (corral_agents{state="running"})

    # CPU usage over CPU requests, by tier
    sum by (tier) (rate(corral_agent_cpu_seconds_total[5m]))
      / sum by (tier) (corral_agent_resource_requests{resource="cpu"})
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.utils import floatToGoString

__all__ = ["AgentUsage", "Metrics", "Snapshot", "snapshot_text", "wanted"]


@dataclass(frozen=True, slots=True)
class AgentUsage:
    org: str
    tier: str
    agent: str
    cpu_request_cores: float
    memory_request_bytes: float
    cpu_seconds: float | None
    rss_bytes: float | None


@dataclass
class Snapshot:
    agents: list[tuple[str, str, str, int]] = field(default_factory=list)  # org, tier, state, n
    tasks: list[tuple[str, str, str, str, int]] = field(default_factory=list)  # +priority, state
    queue_depth: list[tuple[str, str, int]] = field(default_factory=list)  # org, tier, n
    oldest_wait: list[tuple[str, str, float]] = field(default_factory=list)  # org, tier, seconds
    quota: list[tuple[str, str, str, float, float]] = field(default_factory=list)  # used, hard
    usage: list[AgentUsage] = field(default_factory=list)
    orgs: list[tuple[str, int]] = field(default_factory=list)  # tier, how many orgs
    quarantined: int = 0  # stored tasks that could not be loaded and were failed
    pruned: int = 0  # finished tasks pruned past their retention since start


#: (name as exposed, type, help, label names) of each family the snapshot fills, in order
_FAMILIES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "quarantined": (
        "corral_tasks_quarantined_total",
        "counter",
        "Stored tasks that could not be loaded, failed with the reason instead",
        (),
    ),
    "pruned": (
        "corral_tasks_pruned_total",
        "counter",
        "Finished tasks pruned past their plan's retention since the control plane started",
        (),
    ),
    "orgs": ("corral_orgs", "gauge", "Organizations by tier", ("tier",)),
    "agents": ("corral_agents", "gauge", "Agents by org, tier and state", ("org", "tier", "state")),
    "tasks": (
        "corral_tasks",
        "gauge",
        "Tasks by org, tier, priority and state",
        ("org", "tier", "priority", "state"),
    ),
    "queue_depth": ("corral_queue_depth", "gauge", "Queued tasks", ("org", "tier")),
    "oldest_wait": (
        "corral_queue_oldest_wait_seconds",
        "gauge",
        "Age of the oldest queued task",
        ("org", "tier"),
    ),
    "quota_used": ("corral_quota_used", "gauge", "Quota used", ("org", "tier", "resource")),
    "quota_hard": (
        "corral_quota_hard",
        "gauge",
        "Quota hard limit",
        ("org", "tier", "resource"),
    ),
    "requests": (
        "corral_agent_resource_requests",
        "gauge",
        "Resources requested by running agents (cpu in cores, memory in bytes)",
        ("org", "tier", "agent", "resource"),
    ),
    "cpu": (
        "corral_agent_cpu_seconds_total",
        "counter",
        "CPU time used by an agent's processes",
        ("org", "tier", "agent"),
    ),
    "rss": (
        "corral_agent_memory_rss_bytes",
        "gauge",
        "Resident memory of an agent's processes",
        ("org", "tier", "agent"),
    ),
}

_Row = tuple[Sequence[str], float]
#: a value as Go writes a float (prometheus_client's own, which it leaves untyped); the same
#: few values (zero, a plan's limits, counts) recur in every scrape: each is written once
_float_text = functools.lru_cache(maxsize=4096)(cast(Callable[[float], str], floatToGoString))

#: series (a family's name and labels, as written) kept once written: a scrape writes the
#: same thousands again (every active org's quota, every running agent's figures); past this
#: many the cache starts over (label values are org slugs and agent ids, which come and go)
SERIES_KEPT = 65_536
_series: dict[tuple[str, tuple[str, ...]], str] = {}


def _escape(value: str) -> str:
    """A label value as the text format writes it."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _write_family(out: list[str], key: str, rows: Iterable[_Row]) -> None:
    """One family in the Prometheus text format (0.0.4), as prometheus_client writes it:
    labels in name order, values as Go writes floats."""
    name, kind, doc, labels = _FAMILIES[key]
    out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
    order = sorted(range(len(labels)), key=labels.__getitem__)
    names = [labels[i] for i in order]
    for values, value in rows:
        if not names:
            out.append(f"{name} {_float_text(value)}\n")
            continue
        at = (key, tuple(values))
        series = _series.get(at)
        if series is None:
            inner = ",".join(
                f'{n}="{_escape(values[i])}"' for n, i in zip(names, order, strict=True)
            )
            series = f"{name}{{{inner}}} "
            if len(_series) >= SERIES_KEPT:
                _series.clear()
            _series[at] = series
        out.append(f"{series}{_float_text(value)}\n")


def wanted(names: Collection[str] | None) -> frozenset[str]:
    """The snapshot's families (their keys) that a scrape asking for the series ``names``
    needs (``None``: every family)."""
    if names is None:
        return frozenset(_FAMILIES)
    return frozenset(key for key, (name, *_) in _FAMILIES.items() if name in names)


def snapshot_text(s: Snapshot, names: Collection[str] | None = None) -> str:
    """The snapshot's families in the Prometheus text format (only those named in ``names``,
    when given). Written here rather than by
    prometheus_client's generic collector, which took 20 ms for 200 agents' series: a client
    that scrapes several times a second (a dashboard, a script counting completed tasks)
    made it a tenth of the control plane's time."""
    keys = wanted(names)
    out: list[str] = []

    def _family(into: list[str], key: str, rows: Iterable[_Row]) -> None:
        if key in keys:
            _write_family(into, key, rows)

    _family(out, "quarantined", [((), s.quarantined)])
    _family(out, "pruned", [((), s.pruned)])
    _family(out, "orgs", (((tier,), n) for tier, n in s.orgs))
    _family(out, "agents", (((o, t, st), n) for o, t, st, n in s.agents))
    _family(out, "tasks", (((o, t, p, st), n) for o, t, p, st, n in s.tasks))
    _family(out, "queue_depth", (((o, t), n) for o, t, n in s.queue_depth))
    _family(out, "oldest_wait", (((o, t), sec) for o, t, sec in s.oldest_wait))
    _family(out, "quota_used", (((o, t, r), u) for o, t, r, u, _ in s.quota))
    _family(out, "quota_hard", (((o, t, r), h) for o, t, r, _, h in s.quota))
    _family(
        out,
        "requests",
        (
            ((au.org, au.tier, au.agent, resource), value)
            for au in s.usage
            for resource, value in (
                ("cpu", au.cpu_request_cores),
                ("memory", au.memory_request_bytes),
            )
        ),
    )
    _family(
        out,
        "cpu",
        (
            ((au.org, au.tier, au.agent), au.cpu_seconds)
            for au in s.usage
            if au.cpu_seconds is not None
        ),
    )
    _family(
        out,
        "rss",
        (((au.org, au.tier, au.agent), au.rss_bytes) for au in s.usage if au.rss_bytes is not None),
    )
    return "".join(out)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.snapshot = Snapshot()
        self.dispatch_latency = Histogram(
            "corral_dispatch_latency_seconds",
            "From a task's acceptance to its delivery into an agent's inbox",
            ["tier"],
            buckets=(
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
                30,
                60,
            ),
            registry=self.registry,
        )
        self._dispatch_all = self.dispatch_latency.labels("all")
        self.vault_errors = Counter(
            "corral_vault_errors",
            "Vault operations that failed or were denied",
            ["org", "kind"],
            registry=self.registry,
        )

    def dispatched(self, seconds: float) -> None:
        """One task delivered ``seconds`` after it was accepted: counted at once, exactly
        (no sample kept between scrapes, none dropped however rarely they come)."""
        self._dispatch_all.observe(seconds)

    def render(
        self, snapshot: Snapshot | None = None, names: Collection[str] | None = None
    ) -> bytes:
        """The snapshot's families (``snapshot``, else the last one kept), then the series
        counted as things happen; only the series named in ``names`` when given (Prometheus'
        ``name[]``: a family's series by its name, a histogram's by its samples' names)."""
        counted = self.registry if names is None else self.registry.restricted_registry(names)
        text = snapshot_text(self.snapshot if snapshot is None else snapshot, names)
        return text.encode() + generate_latest(counted)
