"""One model call through the gateway: authenticate the agent, find its org's model and the
task it works for, admit it under the org's rates and every budget it is charged to, call the
upstream with the provider key, and settle and meter what it used.

What a call may use is bounded before it is sent: its input by the byte length of the request
(no tokenizer makes more tokens than there are bytes, and the JSON around the text outweighs
the per-message tokens), its output by ``max_tokens`` (or ``max_completion_tokens``; when it
names neither, the org's default is reserved and sent upstream). That bound is held on the
org's period budget, on its role's and on the budget of the task and of each task it was
delegated from; the actual usage the upstream reports replaces it when the call ends. Streams are asked for their
usage (``stream_options.include_usage``); the usage chunk is passed on only if the agent asked
for it too. A stream that breaks without reporting usage is charged its whole reservation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from corral.control.gateway.catalog import ModelCatalog
from corral.control.gateway.credentials import GatewayCredentials, Principal
from corral.control.gateway.limits import Rates
from corral.control.gateway.metering import Meter
from corral.domain.budgets import Hold, Scope
from corral.domain.errors import CorralError, InvalidInput, PermissionDenied, Unauthenticated
from corral.domain.ids import OrgId
from corral.domain.models import MeteredCall, ModelEndpoint, Usage
from corral.domain.secrets import AuditAction, AuditEntry
from corral.providers.openai_compat import Upstreams
from corral.store.gateway_repo import GatewayStore, TaskLink

__all__ = ["CallAnswer", "ModelGateway"]

_PATHS = {"chat": "/chat/completions", "embeddings": "/embeddings"}
_MAX_DEPTH = 64  # delegation chains longer than this are not walked further


@dataclass(slots=True)
class CallAnswer:
    status: int
    content_type: str = "application/json"
    body: bytes = b""
    events: AsyncIterator[bytes] | None = None  # a stream's server-sent events
    finish: Callable[[], Awaitable[None]] | None = None  # a stream's end, read or not
    upstream_seconds: float = 0.0  # spent waiting for the upstream's answer (its headers)


@dataclass(slots=True)
class _Call:
    principal: Principal
    model: ModelEndpoint
    task_id: str | None
    hold: Hold
    bound_in: int
    bound_out: int


class ModelGateway:
    def __init__(
        self,
        *,
        credentials: GatewayCredentials,
        catalog: ModelCatalog,
        meter: Meter,
        store: GatewayStore,
        upstreams: Upstreams,
        audit_entry: Callable[..., AuditEntry],
        current_task: Callable[[str], str | None],
    ) -> None:
        self.credentials = credentials
        self.catalog = catalog
        self.meter = meter
        self.rates = Rates()
        self._store = store
        self._upstreams = upstreams
        self._audit_entry = audit_entry
        self._current_task = current_task
        self._links: dict[str, TaskLink] = {}

    # -- /v1/models -----------------------------------------------------------------------
    async def list_models(self, token: str | None) -> bytes:
        principal = await self._who(token)
        models = await self._store.list_models(principal.org_id)
        data = [
            {
                "id": m.name,
                "object": "model",
                "created": int(m.created_at.timestamp()) if m.created_at else 0,
                "owned_by": principal.org_slug,
            }
            for m in models
        ]
        return orjson.dumps({"object": "list", "data": data})

    # -- calls ----------------------------------------------------------------------------
    async def call(
        self, kind: str, token: str | None, raw: bytes, *, task: str | None = None
    ) -> CallAnswer:
        """Make one call of ``kind`` (``chat`` or ``embeddings``) for the agent ``token``
        belongs to.

        Raises:
            Unauthenticated: no, unknown or revoked credential.
            InvalidInput: the body is not a JSON object naming a model.
            NotFound: the org declared no such model.
            PermissionDenied: the named task is not this agent's.
            RateLimited: over the org's requests or tokens per minute.
            BudgetExceeded: the call could take a budget over.
            Unavailable: the upstream could not be reached.
        """
        principal = await self._who(token)
        model_name = "-"
        try:
            body = _object(raw)
            model_name = _model_name(body)
            task_id, chain = await self._tasks(principal, task)
            model = await self.catalog.model(principal.org_id, model_name, slug=principal.org_slug)
            limits = self.catalog.limits(principal.plan)
            self.rates.admit(principal.org_slug, limits)
            stream = bool(body.get("stream")) and kind == "chat"
            bound_out = 0
            if kind == "chat":
                asked = _max_tokens(body)
                bound_out = asked if asked is not None else limits.default_max_tokens
                if asked is None:
                    body["max_tokens"] = bound_out
            bound_in = len(raw)
            scopes = await self._scopes(principal, chain)
            cost = bound_in * model.price_in + bound_out * model.price_out
            hold = self.meter.reserve(scopes, tokens=bound_in + bound_out, cost=cost)
        except CorralError as exc:
            self._refuse(principal, model_name, exc)
            raise
        call = _Call(principal, model, task_id, hold, bound_in, bound_out)
        try:
            key = await self.catalog.provider_key(model)
            body["model"] = model.upstream_model
            url = model.base_url + _PATHS[kind]
            if stream:
                wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                body["stream_options"] = {
                    **(body.get("stream_options") or {}),
                    "include_usage": True,
                }
                return await self._stream(call, url, key, orjson.dumps(body), wants_usage)
            sent = time.perf_counter()
            reply = await self._upstreams.post(url, key=key, body=orjson.dumps(body))
            waited = time.perf_counter() - sent
        except BaseException:
            self._settle(call, Usage(0, 0), outcome="upstream_error")
            raise
        usage = _usage(reply.body) if reply.status == 200 else None
        if reply.status == 200:
            self._settle(call, usage or Usage(bound_in, bound_out), outcome="ok")
        else:
            self._settle(call, usage or Usage(0, 0), outcome=f"upstream_{reply.status}")
        if reply.status != 200:
            answer = _upstream_error(call.model, reply.status, reply.body, key)
        else:
            answer = CallAnswer(reply.status, reply.content_type or "application/json", reply.body)
        answer.upstream_seconds = waited
        return answer

    async def _stream(
        self, call: _Call, url: str, key: str, body: bytes, wants_usage: bool
    ) -> CallAnswer:
        stack = contextlib.AsyncExitStack()
        sent = time.perf_counter()
        up = await stack.enter_async_context(self._upstreams.stream(url, key=key, body=body))
        waited = time.perf_counter() - sent
        if up.status != 200:
            await stack.aclose()
            self._settle(call, Usage(0, 0), outcome=f"upstream_{up.status}")
            answer = _upstream_error(call.model, up.status, up.body, key)
            answer.upstream_seconds = waited
            return answer
        usage: Usage | None = None

        async def finish() -> None:
            """Close the upstream and settle, once, whether or not the stream was read."""
            if call.hold.settled:
                return
            try:
                await stack.aclose()
            finally:
                if usage is not None:
                    self._settle(call, usage, outcome="ok")
                else:
                    self._settle(call, Usage(call.bound_in, call.bound_out), outcome="no_usage")

        async def events() -> AsyncIterator[bytes]:
            nonlocal usage
            try:
                async for line in up.lines:
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if _may_hold_usage(data):
                        try:
                            chunk = orjson.loads(data)
                        except orjson.JSONDecodeError:
                            chunk = None
                        if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                            usage = _from_usage(chunk["usage"]) or usage
                            if not wants_usage and not chunk.get("choices"):
                                continue
                    yield b"data: " + data.encode() + b"\n\n"
            finally:
                await finish()

        return CallAnswer(
            200, "text/event-stream", events=events(), finish=finish, upstream_seconds=waited
        )

    # -- parts ----------------------------------------------------------------------------
    async def _who(self, token: str | None) -> Principal:
        try:
            return await self.credentials.principal(token)
        except Unauthenticated as exc:
            org_id = exc.details.get("org")
            entry = None
            if org_id is not None:
                entry = self._audit_entry(
                    OrgId(org_id),
                    actor=f"agent:{exc.details.get('agent', '?')}",
                    action=AuditAction.MODEL_CALL,
                    target="-",
                    allowed=False,
                    detail=f"refused: {exc.message}",
                )
            self.meter.refused(entry, org_slug=str(org_id or "-"), reason=exc.code)
            raise

    def _refuse(self, principal: Principal, model: str, exc: CorralError) -> None:
        entry = self._audit_entry(
            OrgId(principal.org_id),
            actor=f"agent:{principal.agent_id}",
            action=AuditAction.MODEL_CALL,
            target=model,
            allowed=False,
            detail=f"refused ({exc.code}): {exc.message}",
        )
        self.meter.refused(entry, org_slug=principal.org_slug, reason=exc.code)

    async def _link(self, task_id: str, *, fresh: bool = False) -> TaskLink | None:
        link = None if fresh else self._links.get(task_id)
        if link is None:
            link = await self._store.task_link(task_id)
            if link is not None:
                if len(self._links) > 100_000:
                    self._links.clear()
                self._links[task_id] = link
        return link

    async def _tasks(self, principal: Principal, named: str | None) -> tuple[str | None, list[str]]:
        """The task the call is for (the one named, else the agent's current one) and the
        chain of tasks it was delegated from."""
        task_id = named or self._current_task(principal.agent_id)
        if task_id is None:
            return None, []
        link = await self._link(task_id)
        if named is not None and (link is None or link[1] != principal.agent_id):
            link = await self._link(task_id, fresh=True)
        if named is not None and (
            link is None or link[0] != principal.org_id or link[1] != principal.agent_id
        ):
            raise PermissionDenied(
                f"task {task_id} is not being run by agent {principal.agent_id}",
                details={"task": task_id},
            )
        chain = [task_id]
        parent = link[2] if link else None
        while parent is not None and len(chain) < _MAX_DEPTH:
            chain.append(parent)
            above = await self._link(parent)
            parent = above[2] if above else None
        return task_id, chain

    async def _scopes(self, principal: Principal, chain: list[str]) -> tuple[Scope, ...]:
        now = self.meter.now()
        scopes = [
            await self.meter.org_scope(principal.org_id, principal.plan, now),
            await self.meter.role_scope(principal.org_id, principal.role, now),
        ]
        for task_id in chain:
            scope = await self.meter.task_scope(task_id)
            if scope is not None:
                scopes.append(scope)
        return tuple(scopes)

    def _settle(self, call: _Call, usage: Usage, *, outcome: str) -> None:
        if call.hold.settled:
            return
        cost = call.model.cost(usage)
        self.meter.settle(call.hold, tokens=usage.total, cost=cost)
        self.rates.spent(call.principal.org_slug, usage.total)
        p = call.principal
        if outcome != "ok":
            self.meter.calls.labels(p.org_slug, call.model.name, outcome).inc()
        if usage.total == 0 and outcome != "ok":
            return
        self.meter.record(
            MeteredCall(
                org_id=p.org_id,
                role=p.role,
                agent_id=p.agent_id,
                task_id=call.task_id,
                model=call.model.name,
                usage=usage,
                cost=cost,
                at=self.meter.now(),
            ),
            p.org_slug,
        )


def _upstream_error(model: ModelEndpoint, status: int, body: bytes, key: str) -> CallAnswer:
    """An upstream's error for the agent: a refused provider key is the org admin's to fix
    and is not described (providers quote part of the key back); other errors pass with the
    key scrubbed out of them."""
    if status in (401, 403):
        message = (
            f"the upstream of model {model.name} refused the organization's provider key "
            f"(HTTP {status}): the org admin should check secret {model.key_secret}"
        )
        error = {"message": message, "type": "upstream_error", "code": "upstream_auth"}
        return CallAnswer(502, body=orjson.dumps({"error": error}))
    return CallAnswer(status, body=body.replace(key.encode(), b"[provider key]") if key else body)


def _may_hold_usage(data: str) -> bool:
    """Whether a stream chunk is worth parsing: most say ``"usage": null`` or nothing."""
    return '"usage"' in data and '"usage":null' not in data and '"usage": null' not in data


def _object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidInput("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    return body


def _model_name(body: dict[str, Any]) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidInput("the request names no model: set 'model'", details={"field": "model"})
    return name


def _max_tokens(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(f"{key} must be a positive whole number", details={"field": key})
        return value
    return None


def _from_usage(usage: dict[str, Any]) -> Usage | None:
    tokens_in = usage.get("prompt_tokens")
    total = usage.get("total_tokens")
    tokens_out = usage.get("completion_tokens")
    if not isinstance(tokens_in, int):
        return None
    if not isinstance(tokens_out, int):
        tokens_out = total - tokens_in if isinstance(total, int) else 0
    return Usage(max(0, tokens_in), max(0, tokens_out))


def _usage(body: bytes) -> Usage | None:
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = reply.get("usage") if isinstance(reply, dict) else None
    return _from_usage(usage) if isinstance(usage, dict) else None
