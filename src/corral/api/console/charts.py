"""Charts of an org's last hour as inline SVG (no script, no outside resource): queue depth,
tasks ended per minute and their mean latency from submission to end."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from corral.api.console.html import duration, esc

__all__ = ["org_charts", "sparkline"]

_W, _H, _PAD = 300, 80, 4


class MinuteLike(Protocol):
    @property
    def start(self) -> int: ...
    @property
    def depth(self) -> int: ...
    @property
    def ended(self) -> int: ...
    @property
    def mean_latency(self) -> float | None: ...


def sparkline(name: str, title: str, values: Sequence[float], label: str) -> str:
    """A line over ``values`` (one per minute, oldest first) with its title and ``label``
    (the figure to read: the latest or the peak)."""
    top = max(values, default=0.0) or 1.0
    step = (_W - 2 * _PAD) / max(1, len(values) - 1)
    points = " ".join(
        f"{_PAD + i * step:.1f},{_H - _PAD - (v / top) * (_H - 2 * _PAD):.1f}"
        for i, v in enumerate(values)
    )
    data = ",".join(f"{v:g}" for v in values)
    return (
        f'<figure class="chart" id="chart-{esc(name)}" data-values="{esc(data)}">'
        f"<figcaption>{esc(title)} <b>{esc(label)}</b></figcaption>"
        f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
        f'aria-label="{esc(title)}"><rect width="{_W}" height="{_H}" class="bg"/>'
        f'<polyline points="{points}" class="line"/></svg></figure>'
    )


def org_charts(minutes: Sequence[MinuteLike]) -> str:
    if not minutes:
        return ""
    since = datetime.fromtimestamp(minutes[0].start, UTC).strftime("%H:%M")
    depth = [float(m.depth) for m in minutes]
    ended = [float(m.ended) for m in minutes]
    latency = [m.mean_latency or 0.0 for m in minutes]
    known = [m.mean_latency for m in minutes if m.mean_latency is not None]
    return (
        f'<div class="charts" id="charts"><p class="note">the last hour, a minute at a time, '
        f"since {since} UTC</p>"
        + sparkline("depth", "queue depth", depth, f"now {depth[-1]:g}, peak {max(depth):g}")
        + sparkline("throughput", "tasks ended / min", ended, f"{sum(ended):g} in the hour")
        + sparkline(
            "latency",
            "mean latency",
            latency,
            f"last {duration(known[-1])}" if known else "no task ended",
        )
        + "</div>"
    )
