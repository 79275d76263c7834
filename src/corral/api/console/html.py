"""The console's HTML: escaping, the page frame, tables, times and durations. Server-rendered
strings; every value from a tenant goes through :func:`esc`."""

from __future__ import annotations

import html
import json
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from fastapi.responses import HTMLResponse

__all__ = [
    "HEADERS",
    "duration",
    "esc",
    "href",
    "page",
    "pretty_json",
    "seconds_between",
    "state",
    "when",
]

_FRAME = resources.files("corral.api").joinpath("templates/console.html")

#: what every console answer carries: no caching of tenant data, no framing, no referrer (a
#: page's URL names org, task and agent ids), scripts only from the console itself
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}


def esc(v: object) -> str:
    return html.escape(str(v if v is not None else ""))


def href(path: str, **query: object) -> str:
    """``path`` with the query parameters that are set (escaped for an attribute)."""
    q = {k: str(v) for k, v in query.items() if v not in (None, "")}
    return esc(path + ("?" + urlencode(q) if q else ""))


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def when(text: str | None) -> str:
    """An ISO time as ``2026-01-02 03:04:05`` (UTC) in a ``<time>`` element."""
    t = _parse(text)
    if t is None:
        return '<span class="none">—</span>'
    return f'<time datetime="{esc(text)}">{esc(t.strftime("%Y-%m-%d %H:%M:%S"))}</time>'


def seconds_between(a: str | None, b: str | None) -> float | None:
    ta, tb = _parse(a), _parse(b)
    return None if ta is None or tb is None else (tb - ta).total_seconds()


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def state(value: str) -> str:
    return f'<span class="state s-{esc(value)}">{esc(value)}</span>'


def pretty_json(value: Any) -> str:
    if value is None:
        return '<span class="none">—</span>'
    return f"<pre>{esc(json.dumps(value, indent=2, sort_keys=True, default=str))}</pre>"


def page(
    title: str,
    body: str,
    *,
    who: str = "",
    live: str = "",
    status: int = 200,
    crumbs: list[tuple[str, str]] | None = None,
) -> HTMLResponse:
    """The console frame around ``body``. ``live``: the event stream the page follows (empty:
    none); ``crumbs``: (label, link) from the top to here."""
    trail = " / ".join(
        f'<a href="{esc(link)}">{esc(label)}</a>' if link else esc(label)
        for label, link in crumbs or []
    )
    account = (
        f'<form method="post" action="/logout" class="logout"><span>{esc(who)}</span> '
        '<button id="logout">log out</button></form>'
        if who
        else ""
    )
    text = (
        _FRAME.read_text(encoding="utf-8")
        .replace("{{title}}", esc(title))
        .replace("{{crumbs}}", trail)
        .replace("{{account}}", account)
        .replace("{{live}}", esc(live))
        .replace("{{body}}", body)
    )
    return HTMLResponse(text, status_code=status, headers=HEADERS)
