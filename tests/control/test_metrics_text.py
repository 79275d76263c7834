"""The snapshot's families are written exactly as prometheus_client's generic collector
writes them (label order, escaping, float format), whatever a label value holds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral.observability import metrics
from corral.observability.metrics import AgentUsage, Metrics, Snapshot, snapshot_text

ODD = 'a"b\\c\nd'  # a quote, a backslash and a newline: each must be escaped


class _Generic(Collector):
    """The snapshot as prometheus_client's own families would expose it."""

    def __init__(self, s: Snapshot) -> None:
        self.s = s

    def collect(self) -> Iterator[Metric]:
        s = self.s
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
        # (name, help, label names, [(label values, value)])
        fams: list[tuple[str, str, list[str], list[tuple[list[str], float]]]] = [
            ("corral_orgs", "Organizations by tier", ["tier"], [([t], n) for t, n in s.orgs]),
            (
                "corral_agents",
                "Agents by org, tier and state",
                ["org", "tier", "state"],
                [([o, t, st], n) for o, t, st, n in s.agents],
            ),
            (
                "corral_tasks",
                "Tasks by org, tier, priority and state",
                ["org", "tier", "priority", "state"],
                [([o, t, p, st], n) for o, t, p, st, n in s.tasks],
            ),
            ("corral_queue_depth", "Queued tasks", ["org", "tier"],
             [([o, t], n) for o, t, n in s.queue_depth]),
            ("corral_queue_oldest_wait_seconds", "Age of the oldest queued task", ["org", "tier"],
             [([o, t], w) for o, t, w in s.oldest_wait]),
            ("corral_quota_used", "Quota used", ["org", "tier", "resource"],
             [([o, t, r], u) for o, t, r, u, _ in s.quota]),
            ("corral_quota_hard", "Quota hard limit", ["org", "tier", "resource"],
             [([o, t, r], h) for o, t, r, _, h in s.quota]),
        ]  # fmt: skip
        for name, doc, labels, rows in fams:
            g = GaugeMetricFamily(name, doc, labels=labels)
            for values, value in rows:
                g.add_metric(values, value)
            yield g
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


def _snapshot() -> Snapshot:
    s = Snapshot(quarantined=2, pruned=12345678901)
    s.orgs = [("free", 3), ("standard", 1000)]
    s.agents = [("acme", "standard", "running", 2), (ODD, "free", "paused", 1)]
    s.tasks = [("acme", "standard", "high", "completed", 10**7), (ODD, "free", "low", "queued", 0)]
    s.queue_depth = [("acme", "standard", 5)]
    s.oldest_wait = [("acme", "standard", 0.1 + 0.2), (ODD, "free", 1e-9)]
    s.quota = [("acme", "standard", "requests.cpu", 0.5, 4.0), (ODD, "free", "pods", 1.0, 2.0)]
    s.usage = [
        AgentUsage("acme", "standard", "agent_1", 0.25, 64 * 2**20, 1.5, 2.0**40),
        AgentUsage(ODD, "free", ODD, 1.0, 1.0, None, None),  # not measured
        AgentUsage("acme", "standard", "agent_2", 0.1, 1.0, float("inf"), 0.0),
    ]
    return s


def test_the_snapshot_is_written_as_prometheus_client_writes_it() -> None:
    s = _snapshot()
    registry = CollectorRegistry()
    registry.register(_Generic(s))
    assert snapshot_text(s) == generate_latest(registry).decode()


def test_an_empty_snapshot_still_names_every_family() -> None:
    registry = CollectorRegistry()
    registry.register(_Generic(Snapshot()))
    assert snapshot_text(Snapshot()) == generate_latest(registry).decode()


def test_the_render_holds_the_snapshot_and_the_counted_series() -> None:
    m = Metrics()
    m.snapshot = _snapshot()
    m.dispatched(0.02)
    text = m.render().decode()
    assert text.startswith(snapshot_text(m.snapshot))
    assert 'corral_dispatch_latency_seconds_count{tier="all"} 1.0' in text


def test_series_written_again_and_past_the_cache_bound_are_still_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Series are kept once written (a scrape writes the same thousands again); the cache is
    bounded, and whatever it holds or dropped, the text is prometheus_client's."""
    monkeypatch.setattr(metrics, "SERIES_KEPT", 8)
    monkeypatch.setattr(metrics, "_series", {})
    for round_ in range(3):  # written, written again from the cache, then other orgs
        s = _snapshot()
        s.quota += [
            (f"org{n}-{round_ // 2}", "standard", "pods", float(n), 15.0) for n in range(20)
        ]
        registry = CollectorRegistry()
        registry.register(_Generic(s))
        assert snapshot_text(s) == generate_latest(registry).decode()
        assert len(metrics._series) <= 8
