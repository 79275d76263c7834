"""``corral demo``: the platform's main job, start to finish, on the embedded default.

An embedded control plane in a temporary data dir (SQLite, its own nats-server, agents as
local processes): organizations on three plans, each declaring a manager role (one agent kept
warm) and a worker role its queue scales, a secret and
its grant, tasks of every priority (the managers split a word count over the bundled corpus
and delegate the parts to workers over the bus), live progress, an idle agent paused and woken
by a new task, cross-tenant probes, models through the gateway (a local stand-in for a
provider, metered calls, a budget refusal), per-org figures, and a teardown that leaves no
process.
Every step checks what it claims; the command exits non-zero when one does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import psutil
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from corral.cli import standin
from corral.cli.context import run
from corral.cli.loop import run_loop
from corral.cli.orgs import quota_table
from corral.cli.output import console
from corral.client import Agent, AsyncClient, TaskDetail, Usage
from corral.domain.errors import CorralError, InvalidInput, NotFound, QuotaExceeded, Unavailable
from corral.settings import Settings

if TYPE_CHECKING:
    from corral.api.server import RunningServer

__all__ = ["demo"]

TERMINAL = {"completed", "blocked", "failed", "cancelled", "expired"}
ORGS = (("acme", "enterprise", 2), ("globex", "standard", 2), ("initech", "free", 1))
SECRET = "demo-token-" + "x" * 8  # a throwaway value; only its hash is ever shown
PROVIDER_KEY = "sk-demo-provider-" + "y" * 16  # what the stand-in upstream accepts
PRICE_IN, PRICE_OUT = 2, 8  # $ per million tokens in and out
PICO_PER_MTOK = 10**6  # picodollars per token at $1 per million tokens


class DemoFailed(CorralError):
    code = "demo_failed"
    exit_code = 1


def check(ok: bool, claim: str) -> None:
    if not ok:
        raise DemoFailed(f"demo step did not do what it claims: {claim}")
    console.print(f"  [green]✓[/] {claim}")


async def refused(call: Awaitable[Any]) -> CorralError | None:
    """The error of the tree ``call`` raised, or None if it was not refused."""
    try:
        await call
    except CorralError as exc:
        return exc
    return None


async def _watch(
    api: AsyncClient, tasks: dict[str, tuple[str, str]], title: str
) -> dict[str, TaskDetail]:
    """Live progress bars until every task (id → (org, label)) is done."""
    console.rule(title)
    results: dict[str, TaskDetail] = {}
    with Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(bar_width=30),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[state]}"),
        console=console,
    ) as bars:
        handles = {
            tid: bars.add_task(f"{org}: {label}", total=1.0, state="queued")
            for tid, (org, label) in tasks.items()
        }
        deadline = time.monotonic() + 120
        while len(results) < len(tasks):
            for tid, (org, _) in tasks.items():
                if tid in results:
                    continue
                t = await api.get_task(org, tid)
                bars.update(handles[tid], completed=t.progress or 0.0, state=t.state.value)
                if t.state in TERMINAL:
                    results[tid] = t
            if time.monotonic() > deadline:
                raise DemoFailed("tasks did not finish within two minutes")
            await asyncio.sleep(0.1)
    return results


async def _story(srv: RunningServer) -> None:
    platform = srv.platform
    api = AsyncClient(srv.url, platform.new_admin_key or "", timeout=60)  # as any client would
    console.print(f"control plane up at {srv.url}; bus at {platform.bus.url}")
    console.print(f"agent limits enforced by: {getattr(platform.runtime, 'mechanism', '?')}")

    # 1. organizations
    console.rule("1. three organizations, three plans: a namespace, a quota, a bus account each")
    keys: dict[str, str] = {}
    for name, plan, _ in ORGS:
        org = await api.create_org(name, plan=plan)
        keys[name] = org.api_key
        check(org.namespace == f"org-{name}", f"{name} on {plan}: namespace {org.namespace}")
    usage = await api.org_usage("globex")
    console.print(quota_table(_quota(usage), "globex (standard: the seed's quota)"))
    bad = await refused(api.create_org("Bad_Name!"))
    check(isinstance(bad, InvalidInput), f"a bad name is refused: {str(bad)[:60]}…")

    # 2. roles
    console.rule("2. roles: each org declares its manager and its workers; the platform runs them")
    agents: dict[str, dict[str, str]] = {}
    for name, _, workers in ORGS:
        declared = await api.request(
            "PUT",
            f"/v1/orgs/{name}/roles",
            json={
                "roles": [
                    {"name": "manager", "minAgents": 1, "maxAgents": 1},
                    {
                        "name": "worker",
                        "maxAgents": workers,
                        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                    },
                ]
            },
        )
        made = [c["action"] for c in declared["changes"]]
        mgr = await _role_agent(api, name, "manager")
        agents[name] = {"manager": mgr.id}
        check(
            made == ["create", "create"] and mgr.state == "running",
            f"{name}: roles manager (1 kept warm) and worker (0..{workers} on demand); "
            f"{mgr.name} running",
        )

    # 3. secrets
    console.rule("3. credentials: a per-org vault, grants like the seed's Role")
    await api.put_secret("acme", "github-token", SECRET)
    await api.add_grant("acme", secret="github-token", role="manager")
    done = await _ask(
        api, "acme", agents["acme"]["manager"], {"op": "secret", "name": "github-token"}
    )
    want = hashlib.sha256(SECRET.encode()).hexdigest()
    check(
        done.state == "completed" and (done.result or {}).get("sha256") == want,
        "acme's manager read the granted github-token (only its hash is shown)",
    )
    t = await api.request(
        "POST",
        "/v1/orgs/acme/tasks",
        json={"role": "worker", "payload": {"op": "secret", "name": "github-token"}},
    )
    done = await _wait(api, "acme", t["id"])
    check(
        done.state == "blocked",
        f"acme's worker ({done.assigned_agent}, started for this task) has no grant: "
        "denied, and audited",
    )

    # 4. scheduling
    tasks: dict[str, tuple[str, str]] = {}
    for name, _, _ in ORGS:
        split = await api.submit_task(
            name,
            agent=agents[name]["manager"],
            priority="critical",
            payload={"op": "split", "corpus": True, "parts": 4, "role": "worker"},
        )
        tasks[split.id] = (name, "critical: count words (split)")
        for prio in ("high", "normal", "low"):
            t = await api.submit_task(
                name, role="worker", priority=prio, payload={"op": "sleep", "seconds": 1}
            )
            tasks[t.id] = (name, f"{prio}: sleep 1s")
    results = await _watch(
        api, tasks, "4. tasks of every priority, live; managers delegate over the bus"
    )
    check(
        all(r.state == "completed" for r in results.values()),
        f"all {len(results)} tasks completed",
    )
    words = {r.result["words"] for r in results.values() if r.result and "words" in r.result}
    check(len(words) == 1, f"each manager counted {words.pop()} words across 4 delegated parts")

    crew: dict[str, list[Agent]] = {
        name: (await api.get_role(name, "worker")).agents or [] for name, _, _ in ORGS
    }
    check(
        all(1 <= len(crew[name]) <= n for name, _, n in ORGS),
        "each org's queue started its workers, never more than maxAgents: "
        + ", ".join(f"{name} {len(crew[name])}/{n}" for name, _, n in ORGS),
    )
    full = await refused(api.provision_agent("initech", name="extra", role="worker"))
    check(isinstance(full, QuotaExceeded), f"initech (free) is at its agent limit: {full}")

    # 5. pause and wake
    console.rule("5. scale to zero: pause an idle agent, wake it with a new task")
    target = next(a.id for a in crew["globex"] if a.state == "running")
    before = (await api.org_usage("globex")).quota
    paused = await api.pause_agent("globex", target)
    check(paused.state == "paused", f"{target} paused at {paused.paused_at}")
    after = (await api.org_usage("globex")).quota
    pods = (before["pods"].used, after["pods"].used)
    pvcs = (before["persistentvolumeclaims"].used, after["persistentvolumeclaims"].used)
    check(
        int(pods[1]) == int(pods[0]) - 1 and pvcs[0] == pvcs[1],
        f"its pod slot is released (pods {pods[0]} → {pods[1]}), its workspace kept (PVCs {pvcs[1]})",
    )
    done = await _ask(api, "globex", target, {"op": "echo"})
    agent = await api.get_agent("globex", target)
    check(
        done.state == "completed" and agent.resumed_at is not None,
        f"a task for it woke it (resumed at {agent.resumed_at}) and completed",
    )

    # 6. isolation
    console.rule("6. isolation: one org cannot reach another")
    async with AsyncClient(srv.url, keys["acme"]) as acme:
        for what, call in (
            ("the org", acme.get_org("globex")),
            ("its agents", acme.list_agents("globex")),
            ("its secrets", acme.list_secrets("globex")),
        ):
            denied = await refused(call)
            check(isinstance(denied, NotFound), f"acme's key asks for globex's {what}: not found")
    await api.put_secret("globex", "globex-only", SECRET)
    await api.add_grant("globex", secret="*", role="manager")
    done = await _ask(
        api, "acme", agents["acme"]["manager"], {"op": "secret", "name": "globex-only"}
    )
    check(done.state == "blocked", "acme's manager cannot read globex's secret")
    probe = await _bus_probe(api, agents)
    if probe is not None:
        check(probe, "acme's agent subscribed to '>' saw none of globex's traffic")

    # 7. models
    console.rule("7. models through the gateway: the key stays in the vault, every token metered")
    async with standin.serving(standin.StandIn(key=PROVIDER_KEY)) as upstream:
        await _models(api, agents["acme"]["manager"], upstream)

    # 8. figures
    console.rule("8. per-org figures (what each org's key sees at /v1/orgs/<org>/usage)")
    table = Table()
    for col in ("org", "plan", "agents", "tasks", "pods used/hard", "cpu s", "rss MiB"):
        table.add_column(col)
    for name, plan, _ in ORGS:
        u = await api.org_usage(name)
        table.add_row(
            name,
            plan,
            ", ".join(f"{k} {v}" for k, v in sorted(u.agents.items())),
            ", ".join(f"{k} {v}" for k, v in sorted(u.tasks.items())),
            f"{u.quota['pods'].used}/{u.quota['pods'].hard}",
            f"{u.measured.cpu_seconds:.2f}",
            f"{u.measured.rss_bytes / 2**20:.0f}",
        )
    console.print(table)
    metrics = await api.metrics()
    check('corral_agents{org="acme"' in metrics, "/metrics (admin) carries every tenant's series")
    await api.aclose()


async def _models(api: AsyncClient, agent: str, upstream: standin.StandIn) -> None:
    """acme declares a model on a stand-in provider; its manager calls it through the gateway
    under a budget that runs out."""
    console.print(
        f"a local stand-in for a provider (OpenAI wire format, canned answers) at {upstream.url}"
    )
    await api.put_secret("acme", "provider-key", upstream.key)
    model = await api.request(
        "PUT",
        "/v1/orgs/acme/models/small",
        json={
            "baseUrl": upstream.url,
            "keySecret": "provider-key",
            "upstreamModel": "standin-1",
            "priceIn": str(PRICE_IN),
            "priceOut": str(PRICE_OUT),
        },
    )
    check(
        model["keySecret"] == "provider-key" and upstream.key not in str(model),
        f"acme declared model small (${PRICE_IN}/${PRICE_OUT} per Mtok in/out); its provider "
        "key is the org secret provider-key",
    )
    chat = await _ask(api, "acme", agent, {"op": "llm", "model": "small", "calls": 2})
    stream = await _ask(api, "acme", agent, {"op": "llm", "model": "small", "stream": True})
    answers = [c for t in (chat, stream) for c in (t.result or {}).get("calls", [])]
    text = "".join(standin.WORDS)
    check(
        chat.state == stream.state == "completed"
        and [a["text"] for a in answers] == [text] * 3
        and all(a["usage"].get("total_tokens") for a in answers),
        f"acme's manager (ctx.llm) got 2 completions and 1 stream: {text!r}",
    )
    env = _agent_env(agent)
    own = env.get("OPENAI_API_KEY", "")
    check(
        bool(own) and not any(upstream.key in v for v in env.values()),
        f"its environment has OPENAI_BASE_URL={env.get('OPENAI_BASE_URL')} and its own "
        "OPENAI_API_KEY; the provider key is nowhere in it",
    )
    check(
        upstream.keys_seen == {f"Bearer {upstream.key}"},
        "the upstream saw only the provider key, added by the gateway",
    )

    usage = await api.request("GET", "/v1/orgs/acme/usage/models")
    total = usage["total"]
    [role] = [r for r in usage["byRole"] if r["role"] == "manager"]
    tasks = [(await api.get_task("acme", t.id)).model_usage for t in (chat, stream)]
    table = Table(title="metered model usage, acme, " + str(usage["period"]))
    for col in ("scope", "calls", "tokens in", "tokens out", "cost $"):
        table.add_column(col)
    for (label, t), row in zip(
        (("task (2 calls)", chat), ("task (1 stream)", stream)), tasks, strict=True
    ):
        [m] = row["byModel"]
        table.add_row(f"{label} {t.id}", *_usage_cells(m))
    table.add_row("role manager", *_usage_cells(role))
    table.add_row("org acme", *_usage_cells(total))
    console.print(table)
    expected = sum(a["usage"]["total_tokens"] for a in answers)
    check(
        sum(t["tokens"] for t in tasks)
        == role["tokensIn"] + role["tokensOut"]
        == total["tokens"]
        == expected
        and total["costPico"] == _cost_pico(total),
        f"usage adds up exactly: tasks = role = org = {expected} tokens, "
        f"${total['cost']} at the model's prices",
    )

    spent = int(total["tokens"])
    budget = spent + 300
    await api.request("PUT", "/v1/orgs/acme/budget", json={"tokens": budget})
    run = await _ask(api, "acme", agent, {"op": "llm", "model": "small", "calls": 40})
    result = run.result or {}
    admitted = len(result.get("calls", []))
    refusal = result.get("refused") or {}
    check(
        run.state == "completed" and 0 < admitted < 40 and refusal.get("error") == "BudgetExceeded",
        f"a budget of {budget} tokens for acme this month: {admitted} more calls admitted, "
        "the next refused before it was sent:",
    )
    console.print(f"    [red]BudgetExceeded[/]: {refusal.get('message')}")
    after = (await api.request("GET", "/v1/orgs/acme/usage/models"))["total"]
    sent = len(upstream.received)
    check(
        after["tokens"] == spent + admitted * (expected // len(answers)) <= budget
        and after["costPico"] == _cost_pico(after)
        and sent == len(answers) + admitted,
        f"no overspend: {after['tokens']} of {budget} tokens used, ${after['cost']}; "
        f"the upstream got {sent} calls, the refused one never",
    )
    audit = await api.request("GET", "/v1/orgs/acme/audit", params={"limit": 1000})
    refusals = [e for e in audit["entries"] if e["action"] == "model.call" and not e["allowed"]]
    check(len(refusals) == 1, "the refusal is in acme's audit log")
    back = await api.request("PUT", "/v1/orgs/acme/budget", json={"planDefault": True})
    check(not back["ownBudget"], f"acme back on its plan's budget: {back['budget']}")


def _usage_cells(row: dict[str, Any]) -> tuple[str, ...]:
    return (str(row["calls"]), str(row["tokensIn"]), str(row["tokensOut"]), str(row["cost"]))


def _cost_pico(row: dict[str, Any]) -> int:
    return (int(row["tokensIn"]) * PRICE_IN + int(row["tokensOut"]) * PRICE_OUT) * PICO_PER_MTOK


def _agent_env(agent: str) -> dict[str, str]:
    """The environment of ``agent``'s process, as the operating system holds it."""
    for p in psutil.process_iter(["environ"]):
        with contextlib.suppress(psutil.Error, OSError):
            env = p.info["environ"] or {}
            if env.get("CORRAL_AGENT_ID") == agent:
                return dict(env)
    raise DemoFailed(f"no process of agent {agent} to look into")


def _quota(usage: Usage) -> dict[str, dict[str, str]]:
    return {name: {"hard": q.hard, "used": q.used} for name, q in usage.quota.items()}


async def _bus_probe(api: AsyncClient, agents: dict[str, dict[str, str]]) -> bool | None:
    """Ask acme's manager to listen on '>' with its own credentials while globex works."""
    busy = await api.submit_task(
        "globex", agent=agents["globex"]["manager"], payload={"op": "sleep", "seconds": 2}
    )
    done = await _ask(
        api,
        "acme",
        agents["acme"]["manager"],
        {"op": "probe_bus", "seconds": 1.5, "other": "globex"},
    )
    await _wait(api, "globex", busy.id)
    result = done.result or {}
    if done.state != "completed" or "foreign" not in result:
        return None  # this agent build has no bus probe
    return int(result["foreign"]) == 0


async def _role_agent(api: AsyncClient, org: str, role: str, timeout: float = 60) -> Agent:
    """The first running agent of ``org``'s ``role``, once there is one."""
    deadline = time.monotonic() + timeout
    while True:
        shown = await api.get_role(org, role)
        running = [a for a in shown.agents or [] if a.state == "running"]
        if running:
            return running[0]
        if time.monotonic() > deadline:
            raise DemoFailed(f"no {role} agent of {org} was running after {timeout:g}s")
        await asyncio.sleep(0.05)


async def _ask(api: AsyncClient, org: str, agent: str, payload: dict[str, Any]) -> TaskDetail:
    """Give ``agent`` a task and wait for it to finish."""
    t = await api.submit_task(org, agent=agent, payload=payload)
    return await _wait(api, org, t.id)


async def _wait(api: AsyncClient, org: str, task_id: str, timeout: float = 60) -> TaskDetail:
    try:
        return await api.wait_task(org, task_id, timeout=timeout, interval=0.05)
    except Unavailable as exc:
        raise DemoFailed(f"task {task_id} did not finish in {timeout:g}s") from exc


def _our_processes(data_dir: Path) -> list[int]:
    """Agent processes and the nats-server started for this data dir."""
    found = []
    for p in psutil.process_iter(["cmdline", "environ"]):
        with contextlib.suppress(psutil.Error, OSError):
            cmd = " ".join(p.info["cmdline"] or [])
            env = p.info["environ"] or {}
            if str(data_dir) in cmd or str(data_dir) in env.get("CORRAL_WORKSPACE", ""):
                found.append(p.pid)
    return found


@contextlib.asynccontextmanager
async def _platform(data_dir: Path) -> AsyncIterator[RunningServer]:
    from corral.api.server import running  # the server's imports are heavy: only here

    settings = Settings(data_dir=data_dir, port=0, heartbeat_seconds=1.0)
    async with running(settings) as srv:
        yield srv


async def _main(data_dir: Path) -> None:
    started = time.monotonic()
    console.rule("[bold]Corral demo: multi-tenant agent orchestration on one machine")
    async with _platform(data_dir) as srv:
        await _story(srv)
        console.rule("9. teardown")
    leftovers = _our_processes(data_dir)
    check(not leftovers, "everything stopped: no agent process, no nats-server left")
    console.rule(f"[bold green]demo finished in {time.monotonic() - started:.0f}s")


@click.command()
@click.option("--keep", is_flag=True, help="Keep the temporary data dir for inspection.")
def demo(keep: bool) -> None:
    """Run the whole story on a throwaway embedded platform and tear it down."""

    def body() -> None:
        tmp = Path(tempfile.mkdtemp(prefix="corral-demo-"))
        try:
            run_loop(_main(tmp))
        finally:
            if keep:
                console.print(f"data dir kept at {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)

    run(body)
