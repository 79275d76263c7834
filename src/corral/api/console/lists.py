"""The console's lists: ``/`` (the organizations a key sees, a page at a time, kept live) and
``/orgs/{org}`` (an org's quota, charts, model spending, agents and tasks with filters, search
and cursor paging). Each page costs what it shows: one page of orgs, one page of tasks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from corral.api.auth import Caller, platform
from corral.api.console import charts, spending
from corral.api.console.html import HEADERS, esc, href, page, when
from corral.api.console.session import answer, console_org, who_label
from corral.api.schemas import usage_to_wire
from corral.domain.agents import AgentState
from corral.domain.errors import InvalidInput
from corral.domain.ids import OrgId
from corral.domain.plans import QUOTA_RESOURCES
from corral.domain.tasks import Priority, TaskFilter, TaskState
from corral.domain.tenancy import Organization

__all__ = ["PAGE", "router"]

router = APIRouter(include_in_schema=False)

#: rows per page (orgs, agents, tasks)
PAGE = 50
#: the most rows a page may ask for (``?limit=``)
MAX_PAGE = 200
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_CURSOR = re.compile(r"^[0-8]?[0-9]{1,18}\.[A-Za-z0-9_]{1,64}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_AGENT_VIEWS = ("active", "all", *(s.value for s in AgentState))


def _one(query: Mapping[str, str], name: str, pattern: re.Pattern[str]) -> str | None:
    value = query.get(name, "").strip()
    if not value:
        return None
    if len(value) > 200 or not pattern.match(value):
        raise InvalidInput(f"invalid {name} {value[:60]!r}", details={name: value[:200]})
    return value


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = query.get(name, "").strip()
    if value and value not in allowed:
        raise InvalidInput(
            f"unknown {name} {value[:60]!r}: use one of {', '.join(allowed)}",
            details={name: value[:200]},
        )
    return value or None


def _limit(query: Mapping[str, str]) -> int:
    text = query.get("limit", "").strip()
    if not text:
        return PAGE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise InvalidInput(
            f"invalid limit {text[:20]!r}: a number from 1 to {MAX_PAGE}",
            details={"limit": text[:20]},
        )
    return int(text)


@router.get("/")
async def home(request: Request) -> Response:
    async def build(who: Caller) -> Response:
        p = platform(request)
        if not who.is_admin:
            own = await p.tenants.get_by_id(who.org_id or "")
            return RedirectResponse(f"/orgs/{own.slug}", status_code=303, headers=HEADERS)
        after = _one(request.query_params, "after", _NAME)
        orgs = await p.tenants.list(after=after, limit=PAGE + 1)
        more = len(orgs) > PAGE
        orgs = orgs[:PAGE]
        rows = [org_row(await org_figures(request, org)) for org in orgs]
        # the live script keeps the rows' figures current and adds or drops the orgs created
        # or deleted within this page's stretch of names (after ``data-after``, and before
        # the last row's name when there is a next page)
        table = (
            f'<table id="orgs" data-after="{esc(after or "")}" data-more="{"1" if more else ""}">'
            "<thead><tr><th>organization</th><th>plan</th><th>namespace</th>"
            "<th>agents</th><th>queued</th></tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table>"
        )
        pager = (
            f'<p class="pager"><a id="next" href="{href("/", after=orgs[-1].slug)}">next page →</a></p>'
            if more
            else ""
        )
        empty = "" if rows else '<p id="no-orgs">No organizations yet.</p>'
        return page(
            "Corral — all tenants",
            table + empty + pager,
            who=who_label(who),
            live=f"/events?after={p.hub.last_id}",
            crumbs=[("all tenants", "")],
        )

    return await answer(request, build)


async def org_figures(request: Request, org: Organization) -> dict[str, Any]:
    """What the list of orgs shows of ``org``: its plan, namespace, agents and queued tasks."""
    p = platform(request)
    _, usage = await p.tenants.usage(org.slug)
    return {
        "org": org.slug,
        "plan": org.plan.name,
        "namespace": org.namespace,
        "agents": usage.agents,
        "agentLimit": org.plan.agent_limit,
        "queued": p.dispatcher.scheduler.queued(OrgId(org.id)),
    }


def org_row(f: Mapping[str, Any]) -> str:
    slug = esc(f["org"])
    return (
        f'<tr data-org="{slug}" id="org-{slug}"><td><a href="/orgs/{slug}">{slug}</a></td>'
        f'<td class="plan">{esc(f["plan"])}</td><td class="namespace">{esc(f["namespace"])}</td>'
        f'<td class="agents">{f["agents"]} / {f["agentLimit"]}</td>'
        f'<td class="queued">{f["queued"]}</td></tr>'
    )


@router.get("/orgs/{slug}/figures")
async def figures(slug: str, request: Request) -> Response:
    """One org's row of the list of orgs, as JSON: what the live list refreshes it from."""

    async def read(who: Caller) -> Response:
        org = await console_org(request, who, slug)
        return JSONResponse(await org_figures(request, org), headers=HEADERS)

    return await answer(request, read)


def _bar(used: str, hard: str, value: float | Fraction, limit: float | Fraction) -> str:
    pct = 0 if limit <= 0 else min(100, round(100 * value / limit))
    return (
        f'<div class="bar" title="{esc(used)} of {esc(hard)}"><span style="width:{pct}%">'
        f"</span></div><small>{esc(used)} / {esc(hard)}</small>"
    )


async def _quota(request: Request, org: Organization) -> str:
    _, usage = await platform(request).tenants.usage(org.slug)
    wire = usage_to_wire(org, usage)["quota"]
    rows = "".join(
        f"<tr><td>{esc(r)}</td><td>"
        f"{_bar(wire[r]['used'], wire[r]['hard'], usage.used[r].value, org.plan.quota[r].value)}"
        "</td></tr>"
        for r in QUOTA_RESOURCES
    )
    rows += (
        "<tr><td>agents</td><td>"
        f"{_bar(str(usage.agents), str(org.plan.agent_limit), usage.agents, org.plan.agent_limit)}"
        "</td></tr>"
    )
    return f'<table class="quota">{rows}</table>'


def agent_row(a: Mapping[str, Any]) -> str:
    org, aid = esc(a["org"]), esc(a["id"])
    busy = " · busy" if a.get("currentTask") else ""
    return (
        f'<tr id="agent-{aid}" data-agent="{aid}"><td><a href="/orgs/{org}/agents/{aid}">'
        f"{esc(a['name'])}</a></td><td>{esc(a['role'])}</td>"
        f'<td class="state s-{esc(a["state"])}">{esc(a["state"])}{busy}</td>'
        f"<td>{a['restarts']}</td><td>{when(a.get('createdAt'))}</td></tr>"
    )


def task_row(t: Mapping[str, Any]) -> str:
    org, tid = esc(t["org"]), esc(t["id"])
    pct = round(100 * (t.get("progress") or 0))
    runs_on = t.get("assignedAgent") or t.get("agent")
    agent = f'<a href="/orgs/{org}/agents/{esc(runs_on)}">{esc(runs_on)}</a>' if runs_on else ""
    return (
        f'<tr id="task-{tid}" data-task="{tid}"><td><a href="/orgs/{org}/tasks/{tid}">{tid}</a>'
        f"</td><td>{esc(t.get('role') or '')}</td><td>{agent}</td><td>{esc(t['priority'])}</td>"
        f'<td class="state s-{esc(t["state"])}">{esc(t["state"])}</td>'
        f'<td><div class="bar"><span style="width:{pct}%"></span></div>'
        f'<small class="pct">{pct}%</small></td><td>{when(t.get("createdAt"))}</td></tr>'
    )


def _select(name: str, chosen: str | None, options: tuple[str, ...], blank: str) -> str:
    opts = f'<option value="">{esc(blank)}</option>' + "".join(
        f"<option{' selected' if o == chosen else ''}>{esc(o)}</option>" for o in options
    )
    return f'<select name="{name}" id="f-{name}">{opts}</select>'


_ENDED = (AgentState.TERMINATED, AgentState.FAILED)


async def _agents(request: Request, org: Organization, view: str, q: str | None) -> str:
    if view == "all":
        states = None
    elif view == "active":
        states = [s for s in AgentState if s not in _ENDED]
    else:
        states = [AgentState(view)]
    found = await platform(request).controller.find_agents(
        org, terminated=True, states=states, search=q, newest=PAGE + 1
    )
    rows = "".join(agent_row(a.to_wire()) for a in reversed(found[-PAGE:]))  # newest first
    more = (
        f'<p class="note">the newest {PAGE}; narrow with the filter</p>'
        if len(found) > PAGE
        else ""
    )
    return (
        '<table class="agents" id="agents"><thead><tr><th>agent</th><th>role</th><th>state</th>'
        f"<th>restarts</th><th>created</th></tr></thead><tbody>{rows}</tbody></table>{more}"
    )


@router.get("/orgs/{slug}")
async def org_page(slug: str, request: Request) -> Response:
    async def build(who: Caller) -> Response:
        org = await console_org(request, who, slug)
        p = platform(request)
        query = request.query_params
        q = (query.get("q") or "").strip()[:128] or None
        if q and q.startswith("task_") and _ID.match(q):
            await p.dispatcher.get_task(org, q)  # NotFound names it
            return RedirectResponse(f"/orgs/{org.slug}/tasks/{q}", status_code=303)
        if q and q.startswith("agent-") and _ID.match(q):
            await p.controller.get_agent(org, q)
            return RedirectResponse(f"/orgs/{org.slug}/agents/{q}", status_code=303)
        view = _choice(query, "agents", _AGENT_VIEWS) or "active"
        st = _choice(query, "state", tuple(s.value for s in TaskState))
        prio = _choice(query, "priority", tuple(x.value for x in Priority))
        role = _one(query, "role", _NAME)
        agent = _one(query, "agent", _ID)
        cursor = _one(query, "cursor", _CURSOR)
        where = TaskFilter(
            states=(TaskState(st),) if st else None,
            role=role,
            agent=agent,
            priorities=(Priority(prio),) if prio else None,
        )
        size = _limit(query)
        tasks, next_cursor = await p.dispatcher.find_tasks(
            org, where=where, cursor=cursor, limit=size
        )
        p.hub.series.depth(org.slug, p.dispatcher.scheduler.queued(OrgId(org.id)))
        filters = {
            "state": st,
            "priority": prio,
            "role": role,
            "agent": agent,
            "agents": None if view == "active" else view,
            "q": q,
            "limit": None if size == PAGE else size,
        }
        form = (
            f'<form method="get" class="filters" id="filters">'
            f'<input name="q" placeholder="task id, agent id or agent name" value="{esc(q)}">'
            f"{_select('agents', view, _AGENT_VIEWS, 'active')}"
            f"{_select('state', st, tuple(s.value for s in TaskState), 'any state')}"
            f"{_select('priority', prio, tuple(x.value for x in Priority), 'any priority')}"
            f'<input name="role" placeholder="role" value="{esc(role)}">'
            f'<input name="agent" placeholder="agent id" value="{esc(agent)}">'
            "<button>filter</button></form>"
        )
        pager = (
            f'<p class="pager"><a id="next" href="{href(f"/orgs/{org.slug}", **filters, cursor=next_cursor)}">'
            "older tasks →</a></p>"
            if next_cursor
            else ""
        )
        # live rows join only the first page without filters (the newest, unfiltered)
        fresh = "1" if cursor is None and not (st or prio or role or agent) else ""
        body = (
            f'<section class="org" data-org="{esc(org.slug)}" data-fresh="{fresh}">'
            f"<h2>{esc(org.slug)} <small>{esc(org.plan.name)} · {esc(org.namespace)}</small></h2>"
            f'<div class="cols">{await _quota(request, org)}'
            f"{charts.org_charts(p.hub.series.last_hour(org.slug))}</div>"
            f"{spending.model_spending(await p.models.usage(org))}"
            f"{form}<h3>Agents</h3>{await _agents(request, org, view, q)}"
            '<h3>Tasks</h3><table class="tasks" id="tasks"><thead><tr><th>task</th><th>role</th>'
            "<th>agent</th><th>priority</th><th>state</th><th>progress</th><th>submitted</th>"
            f"</tr></thead><tbody>{''.join(task_row(t.to_wire()) for t in tasks)}</tbody></table>"
            f"{pager}</section>"
        )
        crumbs = [("all tenants", "/")] if who.is_admin else []
        return page(
            f"Corral — {org.slug}",
            body,
            who=who_label(who),
            live=f"/orgs/{org.slug}/events?after={p.hub.last_id}",
            crumbs=[*crumbs, (org.slug, "")],
        )

    return await answer(request, build)
