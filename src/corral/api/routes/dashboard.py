"""``/``: the operator's dashboard. Server-rendered from the caller's scope (admin: every
tenant; org key: that org only), kept live by a little JavaScript over the event stream."""

from __future__ import annotations

import html
from fractions import Fraction
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from corral.api.auth import caller, platform
from corral.api.schemas import usage_to_wire
from corral.domain.errors import CorralError
from corral.domain.plans import QUOTA_RESOURCES

__all__ = ["router"]

router = APIRouter()
_TEMPLATE = resources.files("corral.api").joinpath("templates/dashboard.html")
_LOGIN = """<form method="get"><label>API key <input name="key" type="password" autofocus>
</label> <button>open</button></form>"""


def _esc(v: object) -> str:
    return html.escape(str(v if v is not None else ""))


def _bar(used: str, hard: str, value: float | Fraction, limit: float | Fraction) -> str:
    pct = 0 if limit <= 0 else min(100, round(100 * value / limit))
    return (
        f'<div class="bar" title="{_esc(used)} of {_esc(hard)}"><span style="width:{pct}%">'
        f"</span></div><small>{_esc(used)} / {_esc(hard)}</small>"
    )


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard(request: Request) -> HTMLResponse:
    key = request.query_params.get("key")
    if not key:
        return HTMLResponse(_page("Corral", _LOGIN, scope="", key=""))
    try:
        who = await caller(request, None, None)
    except CorralError as exc:
        return HTMLResponse(
            _page("Corral", f"<p class=err>{_esc(exc.message)}</p>{_LOGIN}", scope="", key=""), 401
        )
    p = platform(request)
    orgs = [o for o in await p.tenants.list() if who.is_admin or o.id == who.org_id]
    sections: list[str] = []
    for org in orgs:
        _, usage = await p.tenants.usage(org.slug)
        wire = usage_to_wire(org, usage)["quota"]
        bars = "".join(
            f"<tr><td>{_esc(r)}</td><td>{_bar(wire[r]['used'], wire[r]['hard'], usage.used[r].value, org.plan.quota[r].value)}</td></tr>"
            for r in QUOTA_RESOURCES
        )
        bars += f"<tr><td>agents</td><td>{_bar(str(usage.agents), str(org.plan.agent_limit), usage.agents, org.plan.agent_limit)}</td></tr>"
        agents = await p.controller.find_agents(org)
        agent_rows = "".join(_agent_row(a.to_wire()) for a in agents)
        tasks, _ = await p.dispatcher.find_tasks(org, limit=200)  # the newest first
        task_rows = "".join(_task_row(t.to_wire()) for t in tasks)
        sections.append(
            f'<section class="org" id="org-{_esc(org.slug)}" data-org="{_esc(org.slug)}">'
            f"<h2>{_esc(org.slug)} <small>{_esc(org.plan.name)} · {_esc(org.namespace)}</small></h2>"
            f'<div class="cols"><table class="quota">{bars}</table>'
            f'<table class="agents"><thead><tr><th>agent</th><th>role</th><th>state</th></tr></thead>'
            f"<tbody>{agent_rows}</tbody></table></div>"
            f'<table class="tasks"><thead><tr><th>task</th><th>priority</th><th>state</th><th>progress</th></tr></thead>'
            f"<tbody>{task_rows}</tbody></table></section>"
        )
    scope = "" if who.is_admin else orgs[0].slug if orgs else ""
    title = "Corral — all tenants" if who.is_admin else f"Corral — {scope}"
    body = "".join(sections) or "<p>No organizations yet.</p>"
    return HTMLResponse(_page(title, body, scope=scope, key=key))


def _agent_row(a: dict[str, Any]) -> str:
    state = a["state"] + (" · busy" if a.get("currentTask") else "")
    return (
        f'<tr id="agent-{_esc(a["id"])}"><td>{_esc(a["name"])}</td><td>{_esc(a["role"])}</td>'
        f'<td class="state s-{_esc(a["state"])}">{_esc(state)}</td></tr>'
    )


def _task_row(t: dict[str, Any]) -> str:
    pct = round(100 * (t["progress"] or 0))
    return (
        f'<tr id="task-{_esc(t["id"])}"><td>{_esc(t["id"])}</td><td>{_esc(t["priority"])}</td>'
        f'<td class="state s-{_esc(t["state"])}">{_esc(t["state"])}</td>'
        f'<td><div class="bar"><span style="width:{pct}%"></span></div>'
        f'<small class="pct">{pct}%</small></td></tr>'
    )


def _page(title: str, body: str, *, scope: str, key: str) -> str:
    template = _TEMPLATE.read_text(encoding="utf-8")
    return (
        template.replace("{{title}}", _esc(title))
        .replace("{{body}}", body)
        .replace("{{scope}}", _esc(scope))
        .replace("{{key}}", _esc(key))
    )
