"""What the end-to-end benchmarks share: a live platform in a temporary data directory, a
plan with room for a hundred agents, percentiles, the side-by-side table, and the check that
no process is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import math
import os
import platform as host
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil

from corral.control.platform import Platform
from corral.domain import plans
from corral.domain.tenancy import Organization
from corral.settings import Settings

T = TypeVar("T")

BENCH_PLAN = "bench"
STALL_SECONDS = 10.0

#: Room for 200 agents with tiny requests, and no idle pause during a run.
_PLAN_WIRE = {
    "name": BENCH_PLAN,
    "description": "benchmarks: many small agents",
    "agentLimit": 200,
    "quota": {
        "requests.cpu": "200",
        "requests.memory": "400Gi",
        "limits.cpu": "400",
        "limits.memory": "800Gi",
        "pods": 200,
        "persistentvolumeclaims": 200,
    },
    "limitRange": {
        "default": {"cpu": "500m", "memory": "256Mi"},
        "defaultRequest": {"cpu": "10m", "memory": "32Mi"},
        "max": {"cpu": "2", "memory": "4Gi"},
    },
    "bus": {"maxConnections": 1000, "maxConsumers": 1000},
    "apiRatePerSecond": 100000.0,
    "apiBurst": 100000,
    "idleTimeoutSeconds": 86400.0,
}


def importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@contextlib.asynccontextmanager
async def live_platform(
    *,
    heartbeat_seconds: float = 5.0,
    database_url: str | None = None,
    sandbox: str = "auto",
    **overrides: Any,
) -> AsyncIterator[Platform]:
    """A whole platform (SQLite, or ``database_url``; its own nats-server; local agent
    processes) in a temporary directory that is removed afterwards; nothing provisions on its
    own (unless ``auto_provision=True`` is given). A PostgreSQL database given here is emptied
    first."""
    plans.register(plans.plan_from_wire(_PLAN_WIRE))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        settings = Settings(
            data_dir=Path(tmp) / "data",
            port=0,
            heartbeat_seconds=heartbeat_seconds,
            database_url=database_url,
            sandbox=sandbox,  # type: ignore[arg-type]
            **{"auto_provision": False, **overrides},
        )
        if database_url is not None and database_url.startswith("postgres"):
            await _empty_postgres(database_url)
        platform = await Platform(settings).__aenter__()
        try:
            yield platform
        finally:
            await _close(platform)


async def _empty_postgres(url: str) -> None:
    import asyncpg

    plain = "postgresql://" + url.split("://", 1)[1]
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()


async def _close(platform: Platform) -> None:
    """Leave the platform; if its shutdown stalls on a service task that swallowed its
    cancellation (a race in ``asyncio.wait_for`` on Python 3.11), say so and cancel it again,
    so the run ends instead of hanging."""
    closing = asyncio.create_task(platform.__aexit__(None, None, None), name="bench-close")
    while True:
        done, _ = await asyncio.wait({closing}, timeout=STALL_SECONDS)
        if done:
            closing.result()
            return
        for task in asyncio.all_tasks():
            if task.cancelling() and not task.done():
                print(
                    f"warning: the platform's shutdown stalled {STALL_SECONDS:.0f} s on task "
                    f"{task.get_name()!r}, which ignored its cancellation; cancelling it again",
                    file=sys.stderr,
                    flush=True,
                )
                task.cancel()


async def bench_org(platform: Platform, name: str = "bench") -> Organization:
    return (await platform.tenants.create(name, BENCH_PLAN)).org


def pct(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[rank]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def secs(seconds: float) -> str:
    return f"{seconds:,.2f} s"


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


def rate(per_second: float) -> str:
    return "n/a" if math.isnan(per_second) else f"{per_second:,.0f}/s"


class Table:
    """Rows of ``figure | corral | target | peer (measured) | peer (notes)``."""

    def __init__(self, title: str, peer: str) -> None:
        self.title = title
        self.peer = peer
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(
        self, figure: str, value: str, target: str = "", *, measured: str = "", notes: str = ""
    ) -> None:
        self.rows.append((figure, value, target, measured, notes))

    def print(self) -> None:
        head = ("", "corral", "target", f"{self.peer} here", f"{self.peer} (notes)")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(5)]
        print(f"\n{self.title}")
        for row in [head, *self.rows]:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def met(value: float, target: float, *, lower_is_better: bool = True) -> str:
    ok = value <= target if lower_is_better else value >= target
    return "met" if ok else "missed"


def children() -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(os.getpid()).children(recursive=True)
    return []


def report_leftovers(before: set[int]) -> None:
    """Say whether any process this run started is still alive (it should be none)."""
    deadline = time.monotonic() + 5.0
    while True:
        left = [p for p in children() if p.pid not in before]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if left:
        names = ", ".join(f"{p.pid} {p.name()}" for p in left[:10])
        print(f"\nWARNING: {len(left)} process(es) left running: {names}")
    else:
        print("\nclean-up: no process left running")


def header(name: str) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"corral benchmark: {name} — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores, load average {load}, Python {host.python_version()}",
        flush=True,
    )


@contextlib.contextmanager
def watchdog(limit: float, before: set[int], loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """If the block (or the platform's shutdown in it) takes longer than ``limit`` seconds,
    say where ``loop`` was stuck, kill what this run started and exit: a stuck run never
    lingers."""

    def dump() -> None:
        for task in asyncio.all_tasks(loop):
            print(f"--- {task.get_name()} {task!r:.120}", file=sys.stderr)
            link: Any = task.get_coro()
            while link is not None:
                frame = getattr(link, "cr_frame", None) or getattr(link, "ag_frame", None)
                if frame is not None:
                    code = frame.f_code
                    print(
                        f"    {code.co_filename}:{frame.f_lineno} {code.co_name}", file=sys.stderr
                    )
                link = getattr(link, "cr_await", None) or getattr(link, "ag_await", None)
                if link is not None and not hasattr(link, "cr_frame"):
                    print(f"    awaits {link!r:.160}", file=sys.stderr)
                    if not hasattr(link, "ag_frame"):
                        break

    def give_up() -> None:
        print(f"\nERROR: gave up after {limit:.0f} s; killing what this run started", flush=True)
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(dump)  # where it was stuck, on stderr
            time.sleep(1.0)
        for proc in children():
            if proc.pid not in before:
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGKILL)
        sys.stdout.flush()
        os._exit(2)

    timer = threading.Timer(limit, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def bounded(coro: Coroutine[Any, Any, T], limit: float, before: set[int]) -> T:
    """Run ``coro`` in a new event loop under a :func:`watchdog`."""
    import uvloop  # as ``corral up`` runs (corral.cli.loop)

    loop = uvloop.new_event_loop()
    with watchdog(limit, before, loop), asyncio.Runner(loop_factory=lambda: loop) as runner:
        return runner.run(coro)
