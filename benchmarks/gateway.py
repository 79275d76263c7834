"""The model gateway's cost on a model call: its added latency over calling the upstream
directly, p50/p99, for single non-streamed calls, single streams and 200 concurrent streams,
and non-streamed requests per second — with LiteLLM's proxy side by side when it is installed
(set LITELLM to its ``litellm`` executable, kept outside this project's environment).

Three figures answer "what does the gateway add", because on 2 cores a closed loop of 200
concurrent streams measures throughput (every process is saturated, and the difference of two
saturated round trips is queueing, not the gateway's work):

- ``+p50``/``+p99``: the closed loop's round trip through the proxy minus the direct one;
- ``gw p50``/``gw p99``: the time each call spent in the gateway apart from waiting for the
  upstream, as the gateway stamps it on its answer (``Server-Timing``), and ``cpu/call``: the
  control plane's CPU time over the case divided by its calls;
- an open loop: calls started at a fixed rate below saturation (whatever the answers do), each
  timed from when it was due, through the gateway and directly.

Every process is real: a stand-in upstream speaking the OpenAI wire format (a separate
process, answering at once, so what is measured is the proxies), ``corral up`` with an org, a
model and an agent whose gateway credential the calls use, and LiteLLM's proxy. The load
comes from this process with one pooled HTTP client (aiohttp), the same for every target.

    python benchmarks/gateway.py [--requests 2000] [--rate 100] [--profile FILE]

``--profile FILE`` runs the control plane under cProfile and writes its profile to FILE on stop
(the figures are then slower; read it with ``python -m pstats FILE``).

Goals: p50 overhead <= 1 ms, p99 <= 5 ms, >= 1,000 non-streamed requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import psutil
import uvloop

ROOT = Path(__file__).resolve().parents[1]
BODY = {"model": "bench", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8}


#: failed calls by target, status and the start of the answer
FAILURES: dict[str, int] = {}


@dataclass
class Target:
    name: str
    base_url: str
    key: str
    model: str
    pid: int | None = None  # the proxy's process, for its CPU time


@dataclass
class Calls:
    """One case's round trips (seconds) and the gateway's own stamps (ms), if it gave any;
    failed calls are counted apart."""

    round_trips: list[float]
    in_gateway: list[float]
    wall: float
    failed: int = 0

    def __post_init__(self) -> None:
        ok = [v for v in self.round_trips if v == v]
        self.failed = len(self.round_trips) - len(ok)
        self.round_trips = ok
        self.in_gateway = [v for v in self.in_gateway if v == v]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(probe: object, *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError("did not start in time")


@contextlib.contextmanager
def _process(argv: list[str], **kwargs: object) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(argv, text=True, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def upstream(key: str) -> Iterator[str]:
    with _process(
        [sys.executable, "-m", "tests.upstream", key], cwd=ROOT, stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()


@contextlib.contextmanager
def corral(
    upstream_url: str, provider_key: str, data: Path, *, profile: Path | None = None
) -> Iterator[Target]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    python = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    argv = [*python, "-m", "corral.cli", "up", "--data-dir", str(data), "--port", "0"]
    log = (data.parent / "corral.log").open("w")
    with _process(argv, env=env, stdout=log, stderr=subprocess.STDOUT) as proc:
        _wait(lambda: (data / "api.url").exists())
        url = (data / "api.url").read_text().strip()
        admin = (data / "admin.key").read_text().strip()
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=120
        ) as api:
            api.post("/v1/orgs", json={"name": "bench", "plan": "enterprise"}).raise_for_status()
            api.put(
                "/v1/orgs/bench/secrets/provider-key", json={"value": provider_key}
            ).raise_for_status()
            api.put(
                "/v1/orgs/bench/models/bench",
                json={"baseUrl": upstream_url, "keySecret": "provider-key", "upstreamModel": "m"},
            ).raise_for_status()
            agent = api.post(
                "/v1/orgs/bench/agents", json={"name": "caller", "role": "bench", "wait": True}
            )
            agent.raise_for_status()
            env_of = _agent_env(agent.json()["id"])
            yield Target(
                "corral", env_of["OPENAI_BASE_URL"], env_of["OPENAI_API_KEY"], "bench", proc.pid
            )


def _agent_env(agent_id: str) -> dict[str, str]:
    for proc in psutil.process_iter(["environ"]):
        with contextlib.suppress(psutil.Error, OSError):
            env = proc.info["environ"] or {}
            if env.get("CORRAL_AGENT_ID") == agent_id:
                return dict(env)
    raise RuntimeError(f"no process of agent {agent_id}")


@contextlib.contextmanager
def litellm(upstream_url: str, provider_key: str, work: Path) -> Iterator[Target | None]:
    exe = os.environ.get("LITELLM") or shutil.which("litellm")
    if not exe:
        yield None
        return
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: openai/m\n"
        f"      api_base: {upstream_url}\n"
        f"      api_key: {provider_key}\n"
        "general_settings:\n"
        "  master_key: sk-bench\n"
    )
    port = _free_port()
    with _process(
        [exe, "--config", str(config), "--port", str(port), "--num_workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "LITELLM_LOG": "ERROR"},
    ) as proc:
        base = f"http://127.0.0.1:{port}/v1"
        try:
            _wait(lambda: httpx.get(f"http://127.0.0.1:{port}/health/liveliness").is_success)
        except RuntimeError:
            yield None
            return
        yield Target("litellm", base, "sk-bench", "bench", proc.pid)


async def _call(
    session: aiohttp.ClientSession, t: Target, *, stream: bool, stamps: list[float]
) -> float:
    body = {**BODY, "model": t.model, "stream": stream}
    headers = {"Authorization": f"Bearer {t.key}"}
    start = time.perf_counter()
    async with session.post(f"{t.base_url}/chat/completions", json=body, headers=headers) as r:
        if r.status != 200:  # counted, not timed: a refusal is not a round trip
            text = (await r.read())[:200].decode("utf-8", "replace")
            FAILURES.setdefault(f"{t.name} {r.status} {text}", 0)
            FAILURES[f"{t.name} {r.status} {text}"] += 1
            stamps.append(float("nan"))
            return float("nan")
        if stream:
            async for _ in r.content.iter_any():
                pass
        else:
            await r.read()
        timing = r.headers.get("Server-Timing", "")
    took = time.perf_counter() - start
    if timing.startswith("gateway;dur="):
        stamps.append(float(timing.split(",")[0].removeprefix("gateway;dur=")))
    return took


async def closed_loop(t: Target, *, n: int, concurrency: int, stream: bool) -> Calls:
    """``n`` calls, ``concurrency`` at a time, each starting when one ends."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm: list[float] = []
        await asyncio.gather(
            *(_call(session, t, stream=stream, stamps=warm) for _ in range(concurrency))
        )
        out: list[float] = []
        stamps: list[float] = []
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                out.append(await _call(session, t, stream=stream, stamps=stamps))

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return Calls(out, stamps, time.perf_counter() - start)


async def open_loop(t: Target, *, n: int, rate: float, stream: bool) -> Calls:
    """``n`` calls started at ``rate`` per second whatever the answers do, each timed from
    when it was due (a late start counts against the target, not the schedule)."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm: list[float] = []
        await asyncio.gather(*(_call(session, t, stream=stream, stamps=warm) for _ in range(50)))
        out: list[float] = []
        stamps: list[float] = []
        clock = time.perf_counter  # the loop's own clock ticks in whole milliseconds
        start = clock()

        async def one(due: float) -> None:
            await asyncio.sleep(max(0.0, due - clock()))
            took = await _call(session, t, stream=stream, stamps=stamps)
            out.append(clock() - due if took == took else took)

        await asyncio.gather(*(one(start + i / rate) for i in range(n)))
        return Calls(out, stamps, clock() - start)


def _pct(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _row(t: Target, calls: Calls, base: tuple[float, float] | None, cpu: float) -> str:
    values = calls.round_trips
    if not values:
        return f"  {t.name:10} every call failed ({calls.failed})"
    p50, p99 = _pct(values, 50) * 1000, _pct(values, 99) * 1000
    added = ("", "") if base is None else (f"{p50 - base[0]:.2f}", f"{p99 - base[1]:.2f}")
    stamped = (
        (f"{_pct(calls.in_gateway, 50):.3f}", f"{_pct(calls.in_gateway, 99):.3f}")
        if calls.in_gateway
        else ("", "")
    )
    per_call = f"{cpu * 1000 / len(values):.3f}" if t.pid is not None else ""
    failed = f"  ({calls.failed} failed)" if calls.failed else ""
    return (
        f"  {t.name:10} {p50:8.2f} {p99:8.2f} {added[0]:>8} {added[1]:>8} "
        f"{len(values) / calls.wall:8.0f} {stamped[0]:>8} {stamped[1]:>8} {per_call:>9}{failed}"
    )


_HEAD = (
    f"  {'target':10} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} {'req/s':>8} "
    f"{'gw p50':>8} {'gw p99':>8} {'cpu/call':>9}"
)


async def measure(targets: list[Target], requests: int, rate: float) -> None:
    cases = [
        ("non-streamed, 1 at a time", False, 1),
        ("streamed, 1 at a time", True, 1),
        ("streamed, 200 concurrent (closed loop: throughput-bound)", True, 200),
        ("non-streamed, 64 concurrent", False, 64),
    ]
    for title, stream, concurrency in cases:
        print(f"\n{title} ({requests} requests)")
        print(_HEAD)
        base: tuple[float, float] | None = None
        for t in targets:
            before = _cpu(t.pid)
            calls = await closed_loop(t, n=requests, concurrency=concurrency, stream=stream)
            print(_row(t, calls, base, _cpu(t.pid) - before))
            if base is None:
                base = (_pct(calls.round_trips, 50) * 1000, _pct(calls.round_trips, 99) * 1000)
    for stream in (True, False):
        kind = "streamed" if stream else "non-streamed"
        print(f"\n{kind}, open loop at {rate:.0f} calls/s ({requests} requests)")
        print(_HEAD)
        base = None
        for t in targets:
            before = _cpu(t.pid)
            calls = await open_loop(t, n=requests, rate=rate, stream=stream)
            print(_row(t, calls, base, _cpu(t.pid) - before))
            if base is None:
                base = (_pct(calls.round_trips, 50) * 1000, _pct(calls.round_trips, 99) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop calls per second")
    parser.add_argument("--profile", type=Path, help="write the control plane's cProfile here")
    args = parser.parse_args()
    key = f"sk-provider-{secrets.token_hex(8)}"
    with tempfile.TemporaryDirectory() as tmp, upstream(key) as up_url:
        print(f"logs in {tmp}")
        work = Path(tmp)
        direct = Target("direct", up_url, key, "m")
        profile = args.profile.resolve() if args.profile else None
        with (
            corral(up_url, key, work / "corral", profile=profile) as gateway,
            litellm(up_url, key, work) as peer,
        ):
            targets = [direct, gateway] + ([peer] if peer else [])
            if peer is None:
                print("LiteLLM's proxy is not installed (set LITELLM): measuring Corral only")
            print(f"cores: {os.cpu_count()}; the +columns are the added latency over direct")
            uvloop.run(measure(targets, args.requests, args.rate))
            for failure, count in FAILURES.items():
                print(f"failed {count}x: {failure}")


if __name__ == "__main__":
    main()
