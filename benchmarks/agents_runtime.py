"""Local runtime latencies: start() until RUNNING, until the agent's first line, and stop().

The agent is a module run as ``python -m`` that first imports what the built-in agent imports
(``corral.agents.general``: the SDK, the NATS client), then prints its line: the command
shape the runtime hands to its fork server. Measured three ways:

- the fork server (the default), under the strongest limits mechanism ("auto") and rlimits;
  its own start-up (once per runtime) is the first agent's, shown on its own line and left
  out of the percentiles;
- ``zygote=False``: the same command forked from the control plane and exec'd as a fresh
  interpreter, as every agent was started before the fork server;
- the peer: a bare ``asyncio.create_subprocess_exec`` of the same command with none of the
  runtime's work (workspace, creds file, limits, pid file, supervision).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from corral.domain.admission import AdmittedResources
from corral.domain.quantities import parse
from corral.runtime.base import LaunchSpec
from corral.runtime.local import LocalProcessRuntime, default_env

ROUNDS = 20
MODULE = "corral_bench_agent"
PROGRAM = """
import signal, sys, time
import corral.agents.general  # what the built-in agent loads before it does anything
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
time.sleep(3600)
"""
COMMAND = [sys.executable, "-m", MODULE]
METRICS = ("start", "first line", "stop")


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(values) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms"


async def wait_for_line(path: Path, text: str) -> None:
    while not (path.exists() and text in path.read_text()):
        await asyncio.sleep(0.001)


async def corral(
    mechanism: str, env: dict[str, str], *, zygote: bool
) -> tuple[dict[str, list[float]], float]:
    """Figures per metric, and the first agent's start to first line (left out of them)."""
    res = AdmittedResources(parse("500m"), parse("1"), parse("256Mi"), parse("512Mi"))
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    first = float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        async with LocalProcessRuntime(
            Path(tmp), mechanism=mechanism, base_env=env, zygote=zygote
        ) as rt:
            for i in range(ROUNDS + 1):
                spec = LaunchSpec(
                    "bench", "org_bench", f"agent-{i}", f"a{i}", "worker", res, COMMAND, {},
                    "creds",
                )  # fmt: skip
                t0 = time.perf_counter()
                await rt.start(spec)
                started = time.perf_counter() - t0
                await wait_for_line(rt.paths("bench", spec.agent_id).log, "ready")
                line = time.perf_counter() - t0
                t1 = time.perf_counter()
                await rt.stop("bench", spec.agent_id)
                if i == 0:
                    first = line
                    continue
                out["start"].append(started)
                out["first line"].append(line)
                out["stop"].append(time.perf_counter() - t1)
            assert (rt.zygote_pid("bench") is not None) == zygote
    return out, first


async def bare(env: dict[str, str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *COMMAND, stdout=asyncio.subprocess.PIPE, env=env
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
    with tempfile.TemporaryDirectory() as code:
        (Path(code) / f"{MODULE}.py").write_text(PROGRAM)
        paths = [code, *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**default_env(), "PYTHONPATH": os.pathsep.join(paths)}
        peer = await bare(env)
        runs = {
            "fork server (auto)": await corral("auto", env, zygote=True),
            "fork server (rlimit)": await corral("rlimit", env, zygote=True),
            "exec (auto)": await corral("auto", env, zygote=False),
        }
    with tempfile.TemporaryDirectory() as tmp:
        async with LocalProcessRuntime(Path(tmp)) as probe:
            auto = probe.mechanism
    print(f"local runtime, {ROUNDS} agents one after another; auto = {auto}")
    for metric in METRICS:
        print(f"{metric}:")
        for name, (figures, _) in runs.items():
            print(f"  {'corral, ' + name:30} {ms(figures[metric])}")
        print(f"  {'bare subprocess':30} {ms(peer[metric])}")
    print("first agent, start to first line (a fork server's own start-up included):")
    for name, (_, first) in runs.items():
        print(f"  {'corral, ' + name:30} {first * 1000:7.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
