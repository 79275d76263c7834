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

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["AgentUsage", "Metrics", "Snapshot"]


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


class _SnapshotCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        s = self._m.snapshot
        yield CounterMetricFamily(
            "corral_tasks_quarantined",
            "Stored tasks that could not be loaded, failed with the reason instead",
            value=s.quarantined,
        )
        yield CounterMetricFamily(
            "corral_tasks_pruned",
            "Finished tasks pruned past their plan's retention since the control plane started",
            value=s.pruned,
        )
        g = GaugeMetricFamily("corral_orgs", "Organizations by tier", labels=["tier"])
        for tier, n in s.orgs:
            g.add_metric([tier], n)
        yield g
        g = GaugeMetricFamily(
            "corral_agents", "Agents by org, tier and state", labels=["org", "tier", "state"]
        )
        for org, tier, state, n in s.agents:
            g.add_metric([org, tier, state], n)
        yield g
        g = GaugeMetricFamily(
            "corral_tasks",
            "Tasks by org, tier, priority and state",
            labels=["org", "tier", "priority", "state"],
        )
        for org, tier, prio, state, n in s.tasks:
            g.add_metric([org, tier, prio, state], n)
        yield g
        g = GaugeMetricFamily("corral_queue_depth", "Queued tasks", labels=["org", "tier"])
        for org, tier, n in s.queue_depth:
            g.add_metric([org, tier], n)
        yield g
        g = GaugeMetricFamily(
            "corral_queue_oldest_wait_seconds",
            "Age of the oldest queued task",
            labels=["org", "tier"],
        )
        for org, tier, sec in s.oldest_wait:
            g.add_metric([org, tier], sec)
        yield g
        used = GaugeMetricFamily(
            "corral_quota_used", "Quota used", labels=["org", "tier", "resource"]
        )
        hard = GaugeMetricFamily(
            "corral_quota_hard", "Quota hard limit", labels=["org", "tier", "resource"]
        )
        for org, tier, res, u, h in s.quota:
            used.add_metric([org, tier, res], u)
            hard.add_metric([org, tier, res], h)
        yield used
        yield hard
        req = GaugeMetricFamily(
            "corral_agent_resource_requests",
            "Resources requested by running agents (cpu in cores, memory in bytes)",
            labels=["org", "tier", "agent", "resource"],
        )
        cpu = CounterMetricFamily(
            "corral_agent_cpu_seconds",
            "CPU time used by an agent's processes",
            labels=["org", "tier", "agent"],
        )
        rss = GaugeMetricFamily(
            "corral_agent_memory_rss_bytes",
            "Resident memory of an agent's processes",
            labels=["org", "tier", "agent"],
        )
        for au in s.usage:
            req.add_metric([au.org, au.tier, au.agent, "cpu"], au.cpu_request_cores)
            req.add_metric([au.org, au.tier, au.agent, "memory"], au.memory_request_bytes)
            if au.cpu_seconds is not None:
                cpu.add_metric([au.org, au.tier, au.agent], au.cpu_seconds)
            if au.rss_bytes is not None:
                rss.add_metric([au.org, au.tier, au.agent], au.rss_bytes)
        yield req
        yield cpu
        yield rss


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.snapshot = Snapshot()
        self.registry.register(_SnapshotCollector(self))
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
