"""The console's detail pages: a task (payload, result, error, history with times and
durations, parent and children, attempts, why it waits, model usage) and an agent (its spec,
state history, restarts, resources, the tasks it ran and its live log)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from corral.api.auth import Caller, platform
from corral.api.console.html import (
    duration,
    esc,
    page,
    pretty_json,
    seconds_between,
    state,
    when,
)
from corral.api.console.lists import task_row
from corral.api.console.session import answer, console_org, who_label
from corral.domain.tasks import TaskFilter

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
_CHILDREN = 50
_HISTORY = 50  # the newest states an agent page shows
_TERMINAL = ("completed", "blocked", "failed", "cancelled", "expired")


def _dl(pairs: list[tuple[str, str]]) -> str:
    return (
        '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"
    )


def _history(history: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for i, h in enumerate(history):
        nxt = history[i + 1]["at"] if i + 1 < len(history) else None
        took = duration(seconds_between(h["at"], nxt)) if nxt else "—"
        rows.append(
            f"<tr><td>{when(h['at'])}</td><td>{esc(h.get('from') or '')}</td>"
            f'<td>{state(h["to"])}</td><td class="took">{took}</td><td>{esc(h.get("detail"))}</td></tr>'
        )
    return (
        '<table id="history"><thead><tr><th>at</th><th>from</th><th>to</th><th>in it for</th>'
        f"<th>detail</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _error(t: Mapping[str, Any]) -> str:
    result = t.get("result") or {}
    if t["state"] not in ("failed", "blocked", "expired", "cancelled") or not isinstance(
        result, dict
    ):
        return ""
    reason = result.get("reason") or result.get("error") or result.get("message")
    kind = result.get("errorType")
    if not reason and not kind:
        return ""
    return f'<p class="err" id="task-error">{esc(kind or "")} {esc(reason or "")}</p>'


def _usage(usage: Mapping[str, Any]) -> str:
    rows = usage.get("byModel") or []
    if not rows and not usage.get("budget"):
        return '<p class="none" id="model-usage">no model calls</p>'
    body = "".join(
        f"<tr><td>{esc(r.get('model'))}</td><td>{esc(r.get('calls'))}</td>"
        f"<td>{esc(r.get('tokensIn'))}</td><td>{esc(r.get('tokensOut'))}</td>"
        f"<td>{esc(r.get('cost'))}</td></tr>"
        for r in rows
    )
    budget = usage.get("budget")
    return (
        '<table id="model-usage"><thead><tr><th>model</th><th>calls</th><th>tokens in</th>'
        f"<th>tokens out</th><th>cost</th></tr></thead><tbody>{body}</tbody></table>"
        f"<p>total {esc(usage.get('tokens'))} tokens, ${esc(usage.get('cost'))}"
        + (f"; budget {esc(budget)}" if budget else "")
        + "</p>"
    )


@router.get("/orgs/{slug}/tasks/{task_id}")
async def task_page(slug: str, task_id: str, request: Request) -> Response:
    async def build(who: Caller) -> Response:
        org = await console_org(request, who, slug)
        p = platform(request)
        rec, history, waiting = await p.dispatcher.get_task(org, task_id)
        t = rec.to_wire(history)
        children, more = await p.dispatcher.find_tasks(
            org, where=TaskFilter(parent=rec.id), limit=_CHILDREN
        )
        hist = t["history"]
        ended = t["state"] in _TERMINAL
        total = seconds_between(t["createdAt"], t["updatedAt"] if ended else None)
        runs_on = t.get("assignedAgent") or t.get("agent")
        link = f"/orgs/{esc(org.slug)}"
        facts = _dl(
            [
                ("state", f'<span id="task-state">{state(t["state"])}</span>'),
                (
                    "progress",
                    f'<span id="task-progress">{round(100 * (t.get("progress") or 0))}%</span>',
                ),
                ("priority", esc(t["priority"])),
                ("role", esc(t.get("role") or "—")),
                (
                    "agent",
                    f'<a href="{link}/agents/{esc(runs_on)}">{esc(runs_on)}</a>'
                    if runs_on
                    else "—",
                ),
                (
                    "parent",
                    f'<a id="parent" href="{link}/tasks/{esc(t["parent"])}">{esc(t["parent"])}</a>'
                    if t.get("parent")
                    else "—",
                ),
                ("delegated by", esc(t.get("fromAgent") or "—")),
                (
                    "attempts",
                    f'<span id="attempts">{t["attempts"]}</span> of {esc(t["policy"].get("retry", {}).get("maxAttempts", "?"))}',
                ),
                ("submitted", when(t["createdAt"])),
                ("last change", when(t["updatedAt"])),
                ("took" if ended else "so far", duration(total) if ended else "running"),
                ("deadline", when(t.get("deadline"))),
                ("why it waits", f'<span id="waiting">{esc(waiting)}</span>' if waiting else "—"),
                (
                    "trace",
                    f'<code id="trace">{esc(t["traceId"])}</code>' if t.get("traceId") else "—",
                ),
            ]
        )
        actions = (
            f'<form method="post" action="{link}/tasks/{esc(rec.id)}/cancel" class="actions">'
            '<button id="cancel">cancel task</button></form>'
            if not ended
            else ""
        )
        kids = "".join(task_row(c.to_wire()) for c in children)
        body = (
            f'<section class="task" data-org="{esc(org.slug)}" data-task="{esc(rec.id)}">'
            f"<h2>{esc(rec.id)}</h2>{_error(t)}{facts}{actions}"
            f"<h3>History</h3>{_history(hist)}"
            f'<h3>Payload</h3><div id="payload">{pretty_json(t["payload"])}</div>'
            f'<h3>Result</h3><div id="result">{pretty_json(t["result"])}</div>'
            f'<h3>Delegated tasks</h3><table class="tasks" id="children"><tbody>{kids}</tbody></table>'
            + (
                f'<p class="note">the newest {_CHILDREN}; more in the org\'s list</p>'
                if more
                else ""
            )
            + f"<h3>Model usage</h3>{_usage(await p.models.task_usage(org, rec.id))}"
            f"<h3>Policy</h3>{pretty_json(t['policy'])}</section>"
        )
        crumbs = [("all tenants", "/")] if who.is_admin else []
        return page(
            f"Corral — task {rec.id}",
            body,
            who=who_label(who),
            live=f"/orgs/{org.slug}/events?after={p.hub.last_id}",
            crumbs=[*crumbs, (org.slug, f"/orgs/{org.slug}"), (rec.id, "")],
        )

    return await answer(request, build)


def _agent_history(history: Sequence[tuple[str, datetime, str]]) -> str:
    rows = []
    for i, (entered, at, why) in enumerate(history):
        nxt = history[i + 1][1] if i + 1 < len(history) else None
        took = duration((nxt - at).total_seconds()) if nxt else "—"
        rows.append(
            f"<tr><td>{when(at.isoformat())}</td><td>{state(entered)}</td>"
            f'<td class="took">{took}</td><td>{esc(why)}</td></tr>'
        )
    return (
        '<table id="agent-history"><thead><tr><th>at</th><th>state</th><th>in it for</th>'
        f"<th>detail</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


@router.get("/orgs/{slug}/agents/{agent_id}")
async def agent_page(slug: str, agent_id: str, request: Request) -> Response:
    async def build(who: Caller) -> Response:
        org = await console_org(request, who, slug)
        p = platform(request)
        agent = await p.controller.get_agent(org, agent_id)
        a: dict[str, Any] = agent.to_wire()
        sandbox = await p.controller.sandbox_level(org, agent.id)
        tasks, _ = await p.dispatcher.find_tasks(org, where=TaskFilter(agent=agent.id), limit=20)
        history = await p.controller.agent_history(org, agent.id, newest=_HISTORY)
        link = f"/orgs/{esc(org.slug)}/agents/{esc(agent.id)}"
        res = a["resources"]
        facts = _dl(
            [
                ("state", f'<span id="agent-state">{state(a["state"])}</span>'),
                ("role", esc(a["role"])),
                ("current task", esc(a.get("currentTask") or "—")),
                ("slots", esc(a["slots"])),
                ("restarts", f'<span id="restarts">{a["restarts"]}</span>'),
                ("last seen", when(a.get("lastSeenAt"))),
                ("detail", esc(a.get("detail") or "—")),
                ("sandbox", esc(sandbox or "—")),
                ("command", f"<code>{esc(' '.join(a['command']))}</code>"),
            ]
        )
        buttons = []
        if a["state"] == "running":
            buttons.append(("pause", "pause"))
        if a["state"] == "paused":
            buttons.append(("resume", "resume"))
        if a["state"] not in ("terminated",):
            buttons.append(("terminate", "terminate"))
        actions = "".join(
            f'<form method="post" action="{link}/{verb}" class="actions">'
            f'<button id="{verb}">{label}</button></form>'
            for verb, label in buttons
        )
        body = (
            f'<section class="agent" data-org="{esc(org.slug)}" data-agent="{esc(agent.id)}">'
            f"<h2>{esc(a['name'])} <small>{esc(agent.id)}</small></h2>{facts}"
            f'<div class="row">{actions}</div>'
            f"<h3>Resources</h3>{pretty_json(res)}"
            f"<h3>State history</h3>{_agent_history(history)}"
            '<h3>Recent tasks</h3><table class="tasks" id="agent-tasks"><tbody>'
            f"{''.join(task_row(t.to_wire()) for t in tasks)}</tbody></table>"
            f'<h3>Log <small id="log-state"></small></h3>'
            f'<pre id="log" data-src="{link}/log"></pre></section>'
        )
        crumbs = [("all tenants", "/")] if who.is_admin else []
        return page(
            f"Corral — agent {agent.id}",
            body,
            who=who_label(who),
            live=f"/orgs/{org.slug}/events?after={p.hub.last_id}",
            crumbs=[*crumbs, (org.slug, f"/orgs/{org.slug}"), (agent.id, "")],
        )

    return await answer(request, build)
