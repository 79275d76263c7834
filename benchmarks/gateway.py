"""The model gateway's cost on a model call: its added latency over calling the upstream
directly, p50/p99, for single non-streamed calls, single streams and 200 concurrent streams,
and non-streamed requests per second — with LiteLLM's proxy side by side when it is installed
(set LITELLM to its ``litellm`` executable, kept outside this project's environment).

Every process is real: a stand-in upstream speaking the OpenAI wire format (a separate
process, answering at once, so what is measured is the proxies), ``corral up`` with an org, a
model and an agent whose gateway credential the calls use, and LiteLLM's proxy. The load
comes from this process with one pooled HTTP client (aiohttp), the same for every target.

    python benchmarks/gateway.py [--requests 2000]

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


@dataclass
class Target:
    name: str
    base_url: str
    key: str
    model: str


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
def corral(upstream_url: str, provider_key: str, data: Path) -> Iterator[Target]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    argv = [sys.executable, "-m", "corral.cli", "up", "--data-dir", str(data), "--port", "0"]
    log = (data.parent / "corral.log").open("w")
    with _process(argv, env=env, stdout=log, stderr=subprocess.STDOUT):
        _wait(lambda: (data / "api.url").exists())
        url = (data / "api.url").read_text().strip()
        admin = (data / "admin.key").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}) as api:
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
            yield Target("corral", env_of["OPENAI_BASE_URL"], env_of["OPENAI_API_KEY"], "bench")


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
    ):
        base = f"http://127.0.0.1:{port}/v1"
        try:
            _wait(lambda: httpx.get(f"http://127.0.0.1:{port}/health/liveliness").is_success)
        except RuntimeError:
            yield None
            return
        yield Target("litellm", base, "sk-bench", "bench")


async def _call(session: aiohttp.ClientSession, t: Target, *, stream: bool) -> float:
    body = {**BODY, "model": t.model, "stream": stream}
    headers = {"Authorization": f"Bearer {t.key}"}
    start = time.perf_counter()
    async with session.post(f"{t.base_url}/chat/completions", json=body, headers=headers) as r:
        r.raise_for_status()
        if stream:
            async for _ in r.content.iter_any():
                pass
        else:
            await r.read()
    return time.perf_counter() - start


async def latencies(t: Target, *, n: int, concurrency: int, stream: bool) -> list[float]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(_call(session, t, stream=stream) for _ in range(concurrency)))
        out: list[float] = []
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                out.append(await _call(session, t, stream=stream))

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        out.append(-(time.perf_counter() - start))  # the wall time, taken out below
        return out


def _pct(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


async def measure(targets: list[Target], requests: int) -> None:
    cases = [
        ("non-streamed, 1 at a time", False, 1),
        ("streamed, 1 at a time", True, 1),
        ("streamed, 200 concurrent", True, 200),
        ("non-streamed, 64 concurrent", False, 64),
    ]
    for title, stream, concurrency in cases:
        print(f"\n{title} ({requests} requests)")
        print(
            f"  {'target':10} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} {'req/s':>8}"
        )
        base: tuple[float, float] | None = None
        for t in targets:
            values = await latencies(t, n=requests, concurrency=concurrency, stream=stream)
            wall = -values.pop()
            p50, p99 = _pct(values, 50) * 1000, _pct(values, 99) * 1000
            if base is None:
                base = (p50, p99)
                extra = ("", "")
            else:
                extra = (f"{p50 - base[0]:.2f}", f"{p99 - base[1]:.2f}")
            print(
                f"  {t.name:10} {p50:8.2f} {p99:8.2f} {extra[0]:>8} {extra[1]:>8} "
                f"{len(values) / wall:8.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    key = f"sk-provider-{secrets.token_hex(8)}"
    with tempfile.TemporaryDirectory() as tmp, upstream(key) as up_url:
        print(f"logs in {tmp}")
        work = Path(tmp)
        direct = Target("direct", up_url, key, "m")
        with corral(up_url, key, work / "corral") as gateway, litellm(up_url, key, work) as peer:
            targets = [direct, gateway] + ([peer] if peer else [])
            if peer is None:
                print("LiteLLM's proxy is not installed (set LITELLM): measuring Corral only")
            print(f"cores: {os.cpu_count()}; the +columns are the added latency over direct")
            uvloop.run(measure(targets, args.requests))


if __name__ == "__main__":
    main()
