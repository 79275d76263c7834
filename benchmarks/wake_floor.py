"""The floor under waking an agent: the least CPU any Python process spends to come onto the bus.

A paused agent is no process at all (paused to zero); waking it starts one, and before it runs
a task that process must at least connect to the bus, make sure of its inbox consumer and say
it is ready. This measures exactly that and nothing more, with none of the platform: a child
forked from a warm parent (the imports already done, as the fork servers do), connecting to a
plain nats-server on loopback with no authentication, pull-subscribing to a durable consumer
on a JetStream stream, publishing one message and closing. No sandbox, no JWT, no control
plane, no database. Corral's own wake (``benchmarks/tenants.py``, wave 4.1) does all of this
and more, so its cost per woken agent can only be higher.

From it, the bound it puts on a wave of tasks sent to paused agents: ``--agents`` wakes cost at
least ``agents × floor`` CPU seconds before any task has run, spread over this machine's cores
at best.

    python benchmarks/wake_floor.py [--children 100] [--agents 200] [--tasks 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402

from corral.bus.server import find_nats_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def ready(url: str) -> None:
    """Wait for the server to answer (polled, with a deadline)."""

    async def quiet(exc: Exception) -> None:  # refused until it listens: expected
        return None

    deadline = time.monotonic() + 30
    while True:
        try:
            nc = await nats.connect(url, allow_reconnect=False, connect_timeout=1, error_cb=quiet)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        await nc.jetstream().add_stream(name="INBOX", subjects=["inbox.>"])
        await nc.close()
        return


async def come_onto_the_bus(url: str) -> None:
    """What any agent does before its first task, at the least."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.pull_subscribe(f"inbox.{os.getpid()}", durable=f"a{os.getpid()}", stream="INBOX")
    await nc.publish("events.ready", b"ready")
    await nc.flush()
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=100, help="wakes measured")
    parser.add_argument("--agents", type=int, default=200, help="agents a wave wakes")
    parser.add_argument("--tasks", type=int, default=20, help="tasks sent to each of them")
    args = parser.parse_args()
    header("wake floor")
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="corral-floor-") as store:
        server = subprocess.Popen(
            [find_nats_server(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            asyncio.run(ready(url))
            nats_cpu = psutil.Process(server.pid).cpu_times()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            began = time.monotonic()
            for _ in range(args.children):
                pid = os.fork()
                if pid == 0:  # the child: a woken agent, at the least
                    try:
                        asyncio.run(come_onto_the_bus(url))
                    finally:
                        os._exit(0)
                _, status = os.waitpid(pid, 0)
                if status != 0:
                    raise SystemExit(f"a child failed (status {status})")
            wall = (time.monotonic() - began) / args.children
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            now = psutil.Process(server.pid).cpu_times()
        finally:
            server.terminate()
            server.wait(timeout=30)
    child = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / args.children
    serve = (now.user + now.system - nats_cpu.user - nats_cpu.system) / args.children
    floor = child + serve
    cores = os.cpu_count() or 1
    least = args.agents * floor / cores
    total = args.agents * args.tasks
    print(
        f"one wake, {args.children} measured one after another: {child * 1000:.1f} ms CPU in "
        f"the process, {serve * 1000:.1f} ms in nats-server ({wall * 1000:.1f} ms wall each)\n"
        f"{args.agents} wakes: at least {args.agents * floor:.2f} CPU seconds, "
        f"{least:.2f} s on {cores} cores with nothing else running; a wave of "
        f"{total:,} tasks to them at 2,000/s would have {total / 2000:.2f} s for all of it, "
        f"its tasks included"
    )


if __name__ == "__main__":
    main()
