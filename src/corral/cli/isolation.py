"""``corral check-isolation``: cross-tenant probes against a running platform.

Tests prove isolation on a fresh platform; this proves it on *yours*, as it is configured and
running now. It creates two throwaway organizations, gives each an agent, tries from one to
reach the other on every channel the design separates — API, secrets, bus, workspace — and
deletes both again, whatever happened. Each probe that expects a refusal also checks its
control (the owner doing the same thing succeeds), so that a platform refusing everyone does
not pass for an isolated one.

The workspace probes check the directory mode and the built-in agent's own path rule. On the
local runtime, agents started under one uid can still read each other's files with code of
their own; only distinct uids per agent (or Kubernetes) make the mode a boundary.
"""

from __future__ import annotations

import hashlib
import json
import os.path
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import click
import httpx
from rich.markup import escape
from rich.table import Table

from corral.cli.client import ApiClient
from corral.cli.context import Context, pass_ctx, run
from corral.cli.output import console
from corral.domain.errors import CorralError, NotFound, Unavailable

__all__ = ["Probe", "check_isolation", "probe_isolation"]


PROBE_SECRET = "probe-secret"
_TERMINAL = {"completed", "blocked", "failed", "cancelled", "expired"}
_TASK_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe's outcome: on which channel, what was tried, and what came back."""

    channel: str
    name: str
    passed: bool
    detail: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "probe": self.name,
            "passed": self.passed,
            "detail": self.detail,
        }


@dataclass
class _Tenant:
    slug: str
    http: httpx.Client
    agent: str = ""
    task: str = ""


@dataclass
class _Checker:
    admin: ApiClient
    bus_seconds: float
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    probes: list[Probe] = field(default_factory=list)
    tenants: list[_Tenant] = field(default_factory=list)

    # -- plumbing -------------------------------------------------------------------------
    def record(self, channel: str, name: str, passed: bool, detail: str) -> None:
        self.probes.append(Probe(channel, name, passed, detail))

    def section(self, channel: str, body: Callable[[], None]) -> None:
        """Run one channel's probes; if the probing itself breaks, that is a failure too."""
        try:
            body()
        except CorralError as exc:
            self.record(channel, f"the {channel} probes ran to the end", False, exc.message)

    def status(self, who: _Tenant, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
        """Status and body of one request with ``who``'s key; streams are not read."""
        for _ in range(10):
            try:
                with who.http.stream(method, path, **kwargs) as r:
                    if r.status_code == 429:
                        time.sleep(min(float(r.headers.get("Retry-After", 1)), 2.0))
                        continue
                    if r.headers.get("content-type", "").startswith("text/event-stream"):
                        return r.status_code, ""
                    r.read()
                    return r.status_code, r.text
            except httpx.HTTPError as exc:
                raise Unavailable(f"cannot reach the Corral API: {exc}") from exc
        raise Unavailable(f"{method} {path} stayed rate limited")

    def task(self, org: str, agent: str, payload: dict[str, Any]) -> dict[str, Any]:
        created = self.admin.post(
            f"/v1/orgs/{org}/tasks", json={"agent": agent, "payload": payload}
        )
        return self.wait(org, str(created["id"]))

    def wait(
        self, org: str, task_id: str, *, until: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        done = until or (lambda t: t["state"] in _TERMINAL)
        deadline = time.monotonic() + _TASK_TIMEOUT
        while True:
            t: dict[str, Any] = self.admin.get(f"/v1/orgs/{org}/tasks/{task_id}")
            if done(t) or t["state"] in _TERMINAL:
                return t
            if time.monotonic() > deadline:
                raise Unavailable(f"task {task_id} of {org} did not finish in {_TASK_TIMEOUT:g}s")
            time.sleep(0.05)

    # -- setup and teardown ---------------------------------------------------------------
    def setup(self) -> tuple[_Tenant, _Tenant]:
        for side in ("a", "b"):
            org = self.admin.post("/v1/orgs", json={"name": f"iso-{side}-{self.tag}"})
            http = httpx.Client(
                base_url=self.admin.url,
                headers={"Authorization": f"Bearer {org['apiKey']}"},
                timeout=30.0,
            )
            self.tenants.append(_Tenant(str(org["name"]), http))
        a, b = self.tenants
        for t in (a, b):
            agent = self.admin.post(
                f"/v1/orgs/{t.slug}/agents", json={"name": "probe", "wait": True}
            )
            t.agent = str(agent["id"])
            t.task = str(self.task(t.slug, t.agent, {"op": "echo"})["id"])
        return a, b

    def teardown(self) -> None:
        """Delete both organizations at once (each stops its agent), whatever happened."""

        def delete(t: _Tenant) -> None:
            try:
                self.admin.request("DELETE", f"/v1/orgs/{t.slug}")
            except NotFound:
                pass
            except CorralError as exc:
                self.record("cleanup", f"delete organization {t.slug}", False, exc.message)
            finally:
                t.http.close()

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="corral-cleanup") as pool:
            list(pool.map(delete, self.tenants))

    # -- secrets --------------------------------------------------------------------------
    def secrets(self, a: _Tenant, b: _Tenant) -> None:
        value = f"probe-{secrets.token_hex(16)}"
        digest = hashlib.sha256(value.encode()).hexdigest()
        for who, method, path, body in (
            (b, "PUT", f"/v1/orgs/{b.slug}/secrets/{PROBE_SECRET}", {"value": value}),
            (b, "POST", f"/v1/orgs/{b.slug}/grants", {"secret": PROBE_SECRET, "role": "general"}),
        ):
            code, text = self.status(who, method, path, json=body)
            if code not in (200, 201):
                raise Unavailable(f"{method} {path} with the owner's key answered {code}: {text}")

        own = self.task(b.slug, b.agent, {"op": "secret", "name": PROBE_SECRET})
        self.record(
            "secrets",
            f"control: B's agent reads {PROBE_SECRET} under B's grant",
            own["state"] == "completed" and (own.get("result") or {}).get("sha256") == digest,
            _outcome(own),
        )

        def denied(t: dict[str, Any]) -> bool:
            return t["state"] == "blocked" and digest not in str(t.get("result"))

        theirs = self.task(a.slug, a.agent, {"op": "secret", "name": PROBE_SECRET})
        self.record(
            "secrets",
            f"A's agent asking for {PROBE_SECRET} (B's) is denied",
            denied(theirs),
            _outcome(theirs),
        )
        code, text = self.status(
            a, "POST", f"/v1/orgs/{a.slug}/grants", json={"secret": "probe-*", "role": "general"}
        )
        if code != 201:
            raise Unavailable(f"A could not grant itself probe-* in its own org: {code} {text}")
        granted = self.task(a.slug, a.agent, {"op": "secret", "name": PROBE_SECRET})
        self.record(
            "secrets",
            "A granting itself probe-* still reaches no secret of B",
            denied(granted),
            _outcome(granted),
        )
        code, text = self.status(a, "GET", f"/v1/orgs/{a.slug}/audit", params={"limit": 1000})
        entries: list[dict[str, Any]] = json.loads(text).get("entries", []) if code == 200 else []
        denials = [
            e
            for e in entries
            if e.get("action") == "secret.read"
            and e.get("target") == PROBE_SECRET
            and e.get("actor") == f"agent:{a.agent}"
            and not e.get("allowed")
        ]
        self.record(
            "secrets",
            "A's denied reads are in A's audit log",
            len(denials) >= 2,
            f"{len(denials)} denials of {PROBE_SECRET} by A's agent",
        )
        code, text = self.status(b, "GET", f"/v1/orgs/{b.slug}/audit", params={"limit": 1000})
        leaked = [x for x in (a.slug, a.agent) if x in text]
        self.record(
            "secrets",
            "B's audit log holds nothing of A",
            code == 200 and not leaked,
            f"{code}" + (f"; mentions {', '.join(leaked)}" if leaked else ""),
        )

    # -- workspace ------------------------------------------------------------------------
    def workspace(self, a: _Tenant, b: _Tenant) -> None:
        marker = f"written by B {secrets.token_hex(8)}"
        name = f"probe-{self.tag}.txt"
        wrote = self.task(b.slug, b.agent, {"op": "write", "file": name, "content": marker})
        if wrote["state"] != "completed":
            raise Unavailable(f"B's agent could not write its probe file: {_outcome(wrote)}")
        b_ws = self.task(b.slug, b.agent, {"op": "probe_workspace"})
        a_ws = self.task(a.slug, a.agent, {"op": "probe_workspace"})
        for side, t in (("A", a_ws), ("B", b_ws)):
            mode = (t.get("result") or {}).get("mode")
            self.record(
                "workspace",
                f"{side}'s workspace directory is private (0700)",
                t["state"] == "completed" and mode == "0700",
                f"mode {mode}" if mode else _outcome(t),
            )
        b_path = str((b_ws.get("result") or {}).get("path", ""))
        a_path = str((a_ws.get("result") or {}).get("path", ""))
        own = self.task(b.slug, b.agent, {"op": "read", "file": name})
        self.record(
            "workspace",
            "control: B's agent reads its own file",
            own["state"] == "completed" and (own.get("result") or {}).get("content") == marker,
            _outcome(own),
        )
        attempts = {
            "by absolute path": f"{b_path}/{name}",
            "by a relative path": _relative(a_path, b_path, name),
            "by its name in A's own workspace": name,
        }
        for how, path in attempts.items():
            t = self.task(a.slug, a.agent, {"op": "read", "file": path})
            self.record(
                "workspace",
                f"A's agent cannot read B's file {how}",
                t["state"] == "blocked" and marker not in str(t.get("result")),
                _outcome(t),
            )

    # -- API ------------------------------------------------------------------------------
    def api(self, a: _Tenant, b: _Tenant) -> None:
        B = f"/v1/orgs/{b.slug}"  # noqa: N806 - reads as the path it is
        A = f"/v1/orgs/{a.slug}"  # noqa: N806
        reads = [
            ("read B", f"{B}", f"{B}"),
            ("list B's agents", f"{B}/agents", f"{B}/agents"),
            ("read B's agent", f"{B}/agents/{b.agent}", f"{B}/agents/{b.agent}"),
            ("read B's agent under A's org", f"{A}/agents/{b.agent}", f"{B}/agents/{b.agent}"),
            ("read B's agent's logs", f"{B}/agents/{b.agent}/logs", f"{B}/agents/{b.agent}/logs"),
            ("list B's tasks", f"{B}/tasks", f"{B}/tasks"),
            ("read B's task", f"{B}/tasks/{b.task}", f"{B}/tasks/{b.task}"),
            ("read B's task under A's org", f"{A}/tasks/{b.task}", f"{B}/tasks/{b.task}"),
            ("list B's secrets", f"{B}/secrets", f"{B}/secrets"),
            ("read B's secret", f"{B}/secrets/{PROBE_SECRET}", f"{B}/secrets/{PROBE_SECRET}"),
            ("list B's grants", f"{B}/grants", f"{B}/grants"),
            ("read B's audit log", f"{B}/audit", f"{B}/audit"),
            ("read B's usage", f"{B}/usage", f"{B}/usage"),
            ("stream B's events", f"{B}/events", f"{B}/events"),
        ]
        for what, path, control in reads:
            code, _ = self.status(a, "GET", path)
            owner, _ = self.status(b, "GET", control)
            self.record(
                "api",
                f"A's key cannot {what}",
                code == 404 and owner == 200,
                f"{code} (B's key: {owner})",
            )
        changes = [
            ("submit a task to B", "POST", f"{B}/tasks", {"payload": {"op": "echo"}}),
            ("pause B's agent", "POST", f"{B}/agents/{b.agent}/pause", None),
            ("overwrite B's secret", "PUT", f"{B}/secrets/{PROBE_SECRET}", {"value": "x"}),
            ("grant itself B's secrets", "POST", f"{B}/grants", {"secret": "*", "role": "general"}),
            ("delete B's agent", "DELETE", f"{B}/agents/{b.agent}", None),
        ]
        for what, method, path, body in changes:
            code, _ = self.status(a, method, path, json=body)
            self.record("api", f"A's key cannot {what}", code == 404, str(code))
        code, _ = self.status(a, "GET", "/v1/events")
        self.record("api", "A's key cannot stream every org's events", code == 403, str(code))
        code, _ = self.status(a, "GET", "/metrics")
        self.record(
            "api", "A's key cannot read the cross-tenant metrics", code in (401, 403), str(code)
        )
        code, _ = self.status(a, "DELETE", B)
        self.record("api", "A's key cannot delete B", code in (403, 404), str(code))
        for what, path in (("list of organizations", "/v1/orgs"), ("usage", f"{A}/usage")):
            code, text = self.status(a, "GET", path)
            leaked = [x for x in (b.slug, b.agent, b.task) if x in text]
            self.record(
                "api",
                f"A's own {what} shows nothing of B",
                code == 200 and a.slug in text and not leaked,
                f"{code}" + (f"; mentions {', '.join(leaked)}" if leaked else ""),
            )
        state = self.admin.get(f"{B}/agents/{b.agent}")["state"]
        self.record("api", "B's agent untouched by A", state == "running", f"B's agent {state}")

    # -- bus ------------------------------------------------------------------------------
    def bus(self, a: _Tenant, b: _Tenant) -> None:
        busy = self.admin.post(
            f"/v1/orgs/{b.slug}/tasks",
            json={"agent": b.agent, "payload": {"op": "sleep", "seconds": self.bus_seconds + 1}},
        )
        working = self.wait(b.slug, busy["id"], until=lambda t: (t.get("progress") or 0) > 0)
        if working["state"] != "running":
            raise Unavailable(f"B's agent did not get busy: {_outcome(working)}")
        probe = self.task(
            a.slug, a.agent, {"op": "probe_bus", "other": b.slug, "seconds": self.bus_seconds}
        )
        after = self.admin.get(f"/v1/orgs/{b.slug}/tasks/{busy['id']}")
        before_p, after_p = working.get("progress") or 0.0, after.get("progress") or 0.0
        worked = after_p > before_p  # B reported progress while A listened
        busy_detail = f"B's agent worked meanwhile (progress {before_p:.0%} → {after_p:.0%})"
        if probe["state"] != "completed":
            raise Unavailable(f"A's agent could not run the bus probe: {_outcome(probe)}")
        seen: dict[str, Any] = probe.get("result") or {}
        foreign = int(seen.get("foreign", -1))
        detail = f"{seen.get('received')} received, {foreign} foreign; {busy_detail}"
        if seen.get("foreignSubjects"):
            detail += f"; e.g. {', '.join(seen['foreignSubjects'])}"
        self.record(
            "bus",
            "A's agent sees none of B's messages while B works",
            foreign == 0 and worked,
            detail,
        )
        wanted: list[str] = list(seen.get("subscribed", []))
        refused: list[str] = list(seen.get("refused", []))
        self.record(
            "bus",
            "the server refuses A's agent subscriptions beyond its own",
            bool(wanted) and sorted(refused) == sorted(wanted),
            f"refused {', '.join(refused) or 'none'} of {', '.join(wanted)}",
        )

    def run(self) -> list[Probe]:
        try:
            a, b = self.setup()
            self.section("secrets", lambda: self.secrets(a, b))
            self.section("workspace", lambda: self.workspace(a, b))
            self.section("api", lambda: self.api(a, b))
            self.section("bus", lambda: self.bus(a, b))
        finally:
            self.teardown()
        return self.probes


def _outcome(task: dict[str, Any]) -> str:
    result = task.get("result") or {}
    reason = result.get("reason") if isinstance(result, dict) else None
    return f"{task['state']}" + (f": {reason}" if reason else "")


def _relative(frm: str, to: str, name: str) -> str:
    """``to/name`` as a path relative to ``frm``."""
    if not frm or not to:
        return f"../{name}"
    return os.path.join(os.path.relpath(to, frm), name)


def probe_isolation(admin: ApiClient, *, bus_seconds: float = 2.0) -> list[Probe]:
    """Run every probe against the platform ``admin`` (an admin-key client) talks to.

    Returns:
        Every probe's outcome; the two throwaway organizations are gone again.

    Raises:
        CorralError: the probes could not even start (API unreachable, no admin key, ...).
    """
    return _Checker(admin, bus_seconds).run()


def _table(probes: list[Probe]) -> Table:
    table = Table(title="cross-tenant isolation probes")
    table.add_column("channel")
    table.add_column("probe")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for p in probes:
        verdict = "[green]pass[/]" if p.passed else "[bold red]FAIL[/]"
        table.add_row(p.channel, escape(p.name), verdict, escape(p.detail))
    return table


@click.command("check-isolation")
@click.option(
    "--bus-seconds",
    type=click.FloatRange(0.5, 30),
    default=2.0,
    show_default=True,
    help="How long the bus probe listens while the other org works.",
)
@pass_ctx
def check_isolation(ctx: Context, bus_seconds: float) -> None:
    """Probe a running platform for leaks between tenants (admin key).

    Creates two throwaway organizations, tries from one to reach the other over the API,
    the vault, the bus and the workspace, prints a pass/fail table, deletes both and exits
    non-zero if any probe failed.
    """
    failed = 0

    def body() -> None:
        nonlocal failed
        probes = probe_isolation(ctx.client, bus_seconds=bus_seconds)
        failed = sum(not p.passed for p in probes)

        def human() -> None:
            console.print(_table(probes))
            if failed:
                console.print(f"[bold red]{failed} of {len(probes)} probes failed[/]")
            else:
                console.print(f"[green]all {len(probes)} probes passed[/]")

        ctx.emit({"passed": failed == 0, "probes": [p.to_wire() for p in probes]}, human)

    run(body)
    if failed:
        raise SystemExit(1)
