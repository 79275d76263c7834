"""Local runtime latencies: start() until RUNNING, until the agent's first line, and stop().

The peer is a bare ``asyncio.create_subprocess_exec`` of the same program with none of the
runtime's work (workspace, creds file, limits, pid file, supervision), so the difference is
what Corral's bookkeeping costs.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from corral.domain.admission import AdmittedResources
from corral.domain.quantities import parse
from corral.runtime.base import LaunchSpec
from corral.runtime.local import LocalProcessRuntime

ROUNDS = 20
PROGRAM = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
time.sleep(3600)
"""


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(values) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms"


async def wait_for_line(path: Path, text: str) -> None:
    while not (path.exists() and text in path.read_text()):
        await asyncio.sleep(0.001)


async def corral(mechanism: str) -> dict[str, list[float]]:
    res = AdmittedResources(parse("500m"), parse("1"), parse("256Mi"), parse("512Mi"))
    out: dict[str, list[float]] = {"start": [], "first line": [], "stop": []}
    with tempfile.TemporaryDirectory() as tmp:
        async with LocalProcessRuntime(Path(tmp), mechanism=mechanism) as rt:
            for i in range(ROUNDS):
                spec = LaunchSpec(
                    "bench", "org_bench", f"agent-{i}", f"a{i}", "worker", res,
                    [sys.executable, "-c", PROGRAM], {}, "creds",
                )  # fmt: skip
                t0 = time.perf_counter()
                await rt.start(spec)
                out["start"].append(time.perf_counter() - t0)
                await wait_for_line(rt.paths("bench", spec.agent_id).log, "ready")
                out["first line"].append(time.perf_counter() - t0)
                t1 = time.perf_counter()
                await rt.stop("bench", spec.agent_id)
                out["stop"].append(time.perf_counter() - t1)
    return out


async def bare() -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"start": [], "first line": [], "stop": []}
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PROGRAM, stdout=asyncio.subprocess.PIPE
        )
        out["start"].append(time.perf_counter() - t0)
        assert proc.stdout is not None
        await proc.stdout.readline()
        out["first line"].append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        proc.terminate()
        await proc.wait()
        out["stop"].append(time.perf_counter() - t1)
    return out


async def main() -> None:
    peer = await bare()
    runs = {"auto": await corral("auto"), "rlimit": await corral("rlimit")}
    with tempfile.TemporaryDirectory() as tmp:
        async with LocalProcessRuntime(Path(tmp)) as probe:
            auto = probe.mechanism
    print(f"local runtime, {ROUNDS} agents one after another; auto = {auto}")
    for metric in ("start", "first line", "stop"):
        print(f"{metric}:")
        print(f"  corral (auto)    {ms(runs['auto'][metric])}")
        print(f"  corral (rlimit)  {ms(runs['rlimit'][metric])}")
        print(f"  bare subprocess  {ms(peer[metric])}")


if __name__ == "__main__":
    asyncio.run(main())
