"""The org page's model spending: this period's budget and what is left of it, whether the
org's tasks are held back because it is spent, and calls, tokens and cost per role (with each
role's own budget) and per model. Rendered from the same figures as ``GET usage/models``."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from corral.api.console.html import esc

__all__ = ["model_spending"]


def _amount(budget: Mapping[str, Any] | None, left: Mapping[str, Any] | None) -> str:
    """``1000 tokens · $5`` with what is left, or ``no limit``."""
    if not budget or (budget.get("tokens") is None and budget.get("cost") is None):
        return "no limit"
    parts = []
    if budget.get("tokens") is not None:
        parts.append(f"{esc(budget['tokens'])} tokens ({esc((left or {}).get('tokens'))} left)")
    if budget.get("cost") is not None:
        parts.append(f"${esc(budget['cost'])} (${esc((left or {}).get('cost'))} left)")
    return " · ".join(parts)


def _bar(budget: Mapping[str, Any] | None, tokens: int, cost: str) -> str:
    """How much of the budget is spent, by whichever dimension is nearer its limit."""
    if not budget:
        return ""
    shares = []
    if budget.get("tokens"):
        shares.append(tokens / int(budget["tokens"]))
    if budget.get("cost") and Decimal(budget["cost"]) > 0:
        shares.append(float(Decimal(cost) / Decimal(budget["cost"])))
    if not shares:
        return ""
    pct = min(100, round(100 * max(shares)))
    return f'<div class="bar" title="{pct}% spent"><span style="width:{pct}%"></span></div>'


def _rows(rows: list[Mapping[str, Any]], key: str, *, budgets: bool) -> str:
    out = []
    for r in rows:
        tokens = int(r["tokensIn"]) + int(r["tokensOut"])
        extra = ""
        if budgets:
            extra = (
                f"<td>{_bar(r.get('budget'), tokens, str(r['cost']))}"
                f"{_amount(r.get('budget'), r.get('left'))}</td>"
            )
        out.append(
            f'<tr data-{key}="{esc(r[key])}"><td>{esc(r[key])}</td><td>{esc(r["calls"])}</td>'
            f"<td>{esc(r['tokensIn'])}</td><td>{esc(r['tokensOut'])}</td>"
            f"<td>${esc(r['cost'])}</td>{extra}</tr>"
        )
    return "".join(out)


def model_spending(usage: Mapping[str, Any]) -> str:
    """The section for ``usage`` (:meth:`GatewayService.usage`'s answer)."""
    total = usage["total"]
    held = usage.get("heldBack")
    head = "<th>calls</th><th>tokens in</th><th>tokens out</th><th>cost</th>"
    by_role = _rows(usage.get("byRole") or [], "role", budgets=True)
    by_model = _rows(usage.get("byModel") or [], "model", budgets=False)
    return (
        f'<div id="model-spending" data-period="{esc(usage["period"])}">'
        f"<h3>Model usage — {esc(usage['period'])}</h3>"
        f'<p id="model-budget">budget: {_bar(usage["budget"], total["tokens"], total["cost"])}'
        f"{_amount(usage['budget'], usage.get('left'))}"
        f" ({'its own' if usage.get('ownBudget') else 'the plan’s'}); spent "
        f"{esc(total['tokens'])} tokens, ${esc(total['cost'])} in {esc(total['calls'])} calls</p>"
        + (f'<p class="err" id="held-back">tasks held back: {esc(held)}</p>' if held else "")
        + (
            f'<table id="usage-by-role"><thead><tr><th>role</th>{head}<th>role budget</th>'
            f"</tr></thead><tbody>{by_role}</tbody></table>"
            if by_role
            else ""
        )
        + (
            f'<table id="usage-by-model"><thead><tr><th>model</th>{head}</tr></thead>'
            f"<tbody>{by_model}</tbody></table>"
            if by_model
            else '<p class="none">no model calls this period</p>'
        )
        + "</div>"
    )
