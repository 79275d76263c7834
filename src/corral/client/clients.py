"""The two clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), with the
same methods, over httpx.

Each method is one call of the REST API (``docs`` at ``/docs`` of a running platform): the
request body goes through the API's own models first (an :class:`~corral.domain.errors.
InvalidInput` before anything is sent), the answer comes back as the API's JSON, and an
error answer is raised as the platform's error tree (``NotFound``, ``Conflict``,
``QuotaExceeded``, ``PermissionDenied``, ``RateLimited``, ``Unavailable``...).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from corral.client import calls
from corral.client.calls import JSON, TERMINAL_STATES, Call
from corral.domain import errors

__all__ = ["AsyncClient", "Client"]

DEFAULT_TIMEOUT = 30.0
#: what the client waits for an answer to a call that waits itself (``wait=True``)
WAIT_TIMEOUT = 60.0


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class _Base:
    """What both clients build; they differ only in how a :class:`Call` is sent."""

    url: str

    @staticmethod
    def _org(name: str, plan: str | None) -> Call:
        return calls.org_create(name, plan)

    @staticmethod
    def _deadline_passed(deadline: float, org: str, task_id: str, timeout: float) -> None:
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"task {task_id} of {org} did not end within {timeout:g}s")


class Client(_Base):
    """A blocking client of one platform, as one API key.

    Args:
        url: the API's base URL, e.g. ``http://127.0.0.1:8470``.
        api_key: an admin key or an org's key (``crl_...``).
        timeout: seconds to wait for an answer.
    """

    def __init__(
        self, url: str, api_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=_headers(api_key), timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call) -> Any:
        """Send one call; its JSON answer, or the error of the tree it stands for."""
        timeout = call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT
        try:
            resp = self._http.request(
                call.method, call.path, json=call.json, params=call.params, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise calls.unreachable(self.url, call, exc) from exc
        return calls.answer(resp)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any call of the API by method and path (``json=``, ``params=``, ``timeout=``)."""
        return self.send(Call(method, path, **kwargs))

    # -- organizations ------------------------------------------------------------------
    def create_org(self, name: str, *, plan: str | None = None) -> JSON:
        """Create an organization; the answer carries its API key, shown this once."""
        result: JSON = self.send(self._org(name, plan))
        return result

    def list_orgs(self) -> list[JSON]:
        result: list[JSON] = self.send(Call("GET", "/v1/orgs"))["orgs"]
        return result

    def get_org(self, org: str) -> JSON:
        result: JSON = self.send(Call("GET", calls.path("orgs", org)))
        return result

    def org_usage(self, org: str) -> JSON:
        result: JSON = self.send(Call("GET", calls.path("orgs", org, "usage")))
        return result

    # -- agents -------------------------------------------------------------------------
    def provision_agent(
        self,
        org: str,
        *,
        name: str,
        role: str | None = None,
        cpu: str | None = None,
        memory: str | None = None,
        cpu_limit: str | None = None,
        memory_limit: str | None = None,
        gpu: int | None = None,
        command: list[str] | None = None,
        slots: int | None = None,
        wait: bool = False,
    ) -> JSON:
        """Provision an agent; with ``wait``, answer once it is running (or raise
        ``Unavailable`` with its last log lines if it exits before it is ready)."""
        fields = calls.agent_fields(
            name, role, cpu, memory, cpu_limit, memory_limit, gpu, command, slots, wait
        )
        result: JSON = self.send(calls.agent_create(org, fields, wait_timeout=WAIT_TIMEOUT))
        return result

    def list_agents(self, org: str, *, state: str | None = None) -> list[JSON]:
        params = {"state": state} if state else None
        result: list[JSON] = self.send(
            Call("GET", calls.path("orgs", org, "agents"), params=params)
        )["agents"]
        return result

    def get_agent(self, org: str, agent: str) -> JSON:
        result: JSON = self.send(Call("GET", calls.path("orgs", org, "agents", agent)))
        return result

    def pause_agent(self, org: str, agent: str, *, force: bool = False) -> JSON:
        call = Call(
            "POST",
            calls.path("orgs", org, "agents", agent, "pause"),
            params={"force": calls.flag(force)},
        )
        result: JSON = self.send(call)
        return result

    def resume_agent(self, org: str, agent: str, *, wait: bool = False) -> JSON:
        call = Call(
            "POST",
            calls.path("orgs", org, "agents", agent, "resume"),
            params={"wait": calls.flag(wait)},
            timeout=WAIT_TIMEOUT if wait else None,
        )
        result: JSON = self.send(call)
        return result

    def terminate_agent(self, org: str, agent: str, *, keep_workspace: bool = False) -> None:
        params = {"keep_workspace": calls.flag(keep_workspace)}
        self.send(Call("DELETE", calls.path("orgs", org, "agents", agent), params=params))

    def agent_logs(self, org: str, agent: str, *, tail: int = 200) -> str:
        call = Call("GET", calls.path("orgs", org, "agents", agent, "logs"), params={"tail": tail})
        return str(self.send(call)["logs"])

    # -- tasks --------------------------------------------------------------------------
    def submit_task(
        self,
        org: str,
        *,
        role: str | None = None,
        agent: str | None = None,
        payload: Mapping[str, Any] | None = None,
        priority: str | None = None,
        deadline: str | None = None,
        requirements: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        **more: Any,
    ) -> JSON:
        """Submit a task for exactly one of ``role`` or ``agent``; ``more`` takes the
        body's other fields by their wire names (``retry``, ``runTimeout``, ``maxTokens``)."""
        fields = calls.task_fields(
            role, agent, payload, priority, deadline, requirements, idempotency_key, more
        )
        result: JSON = self.send(calls.task_create(org, fields))
        return result

    def get_task(self, org: str, task: str) -> JSON:
        result: JSON = self.send(Call("GET", calls.path("orgs", org, "tasks", task)))
        return result

    def list_tasks(self, org: str, **filters: Any) -> JSON:
        """A page of tasks, newest first: ``{"tasks": [...], "nextCursor": ...}``; filters
        ``state``, ``role``, ``agent``, ``priority``, ``parent``, ``limit``, ``cursor``."""
        result: JSON = self.send(calls.task_list(org, filters))
        return result

    def cancel_task(self, org: str, task: str) -> JSON:
        result: JSON = self.send(Call("POST", calls.path("orgs", org, "tasks", task, "cancel")))
        return result

    def wait_task(
        self, org: str, task: str, *, timeout: float = 3600.0, interval: float = 0.1
    ) -> JSON:
        """The task once it has ended (completed, blocked, failed, cancelled, expired).

        Raises:
            Unavailable: it had not ended within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.get_task(org, task)
            if found["state"] in TERMINAL_STATES:
                return found
            self._deadline_passed(deadline, org, task, timeout)
            time.sleep(interval)

    # -- secrets and grants -------------------------------------------------------------
    def put_secret(self, org: str, name: str, value: str | bytes) -> JSON:
        result: JSON = self.send(calls.secret_put(org, name, value))
        return result

    def list_secrets(self, org: str) -> JSON:
        result: JSON = self.send(Call("GET", calls.path("orgs", org, "secrets")))
        return result

    def add_grant(
        self, org: str, *, secret: str, role: str | None = None, agent: str | None = None
    ) -> JSON:
        result: JSON = self.send(calls.grant_create(org, secret, role, agent))
        return result

    # -- the platform -------------------------------------------------------------------
    def metrics(self) -> str:
        """Every tenant's metrics in the Prometheus text format (an admin key)."""
        return str(self.send(Call("GET", "/metrics")))


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: the same methods, awaited.

    Args:
        url: the API's base URL, e.g. ``http://127.0.0.1:8470``.
        api_key: an admin key or an org's key (``crl_...``).
        timeout: seconds to wait for an answer.
    """

    def __init__(
        self, url: str, api_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=_headers(api_key), timeout=timeout
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call) -> Any:
        """Send one call; its JSON answer, or the error of the tree it stands for."""
        timeout = call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT
        try:
            resp = await self._http.request(
                call.method, call.path, json=call.json, params=call.params, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise calls.unreachable(self.url, call, exc) from exc
        return calls.answer(resp)

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any call of the API by method and path (``json=``, ``params=``, ``timeout=``)."""
        return await self.send(Call(method, path, **kwargs))

    async def create_org(self, name: str, *, plan: str | None = None) -> JSON:
        """Create an organization; the answer carries its API key, shown this once."""
        result: JSON = await self.send(self._org(name, plan))
        return result

    async def list_orgs(self) -> list[JSON]:
        result: list[JSON] = (await self.send(Call("GET", "/v1/orgs")))["orgs"]
        return result

    async def get_org(self, org: str) -> JSON:
        result: JSON = await self.send(Call("GET", calls.path("orgs", org)))
        return result

    async def org_usage(self, org: str) -> JSON:
        result: JSON = await self.send(Call("GET", calls.path("orgs", org, "usage")))
        return result

    async def provision_agent(
        self,
        org: str,
        *,
        name: str,
        role: str | None = None,
        cpu: str | None = None,
        memory: str | None = None,
        cpu_limit: str | None = None,
        memory_limit: str | None = None,
        gpu: int | None = None,
        command: list[str] | None = None,
        slots: int | None = None,
        wait: bool = False,
    ) -> JSON:
        """Provision an agent; with ``wait``, answer once it is running."""
        fields = calls.agent_fields(
            name, role, cpu, memory, cpu_limit, memory_limit, gpu, command, slots, wait
        )
        result: JSON = await self.send(calls.agent_create(org, fields, wait_timeout=WAIT_TIMEOUT))
        return result

    async def list_agents(self, org: str, *, state: str | None = None) -> list[JSON]:
        params = {"state": state} if state else None
        found = await self.send(Call("GET", calls.path("orgs", org, "agents"), params=params))
        result: list[JSON] = found["agents"]
        return result

    async def get_agent(self, org: str, agent: str) -> JSON:
        result: JSON = await self.send(Call("GET", calls.path("orgs", org, "agents", agent)))
        return result

    async def pause_agent(self, org: str, agent: str, *, force: bool = False) -> JSON:
        call = Call(
            "POST",
            calls.path("orgs", org, "agents", agent, "pause"),
            params={"force": calls.flag(force)},
        )
        result: JSON = await self.send(call)
        return result

    async def resume_agent(self, org: str, agent: str, *, wait: bool = False) -> JSON:
        call = Call(
            "POST",
            calls.path("orgs", org, "agents", agent, "resume"),
            params={"wait": calls.flag(wait)},
            timeout=WAIT_TIMEOUT if wait else None,
        )
        result: JSON = await self.send(call)
        return result

    async def terminate_agent(self, org: str, agent: str, *, keep_workspace: bool = False) -> None:
        params = {"keep_workspace": calls.flag(keep_workspace)}
        await self.send(Call("DELETE", calls.path("orgs", org, "agents", agent), params=params))

    async def agent_logs(self, org: str, agent: str, *, tail: int = 200) -> str:
        call = Call("GET", calls.path("orgs", org, "agents", agent, "logs"), params={"tail": tail})
        return str((await self.send(call))["logs"])

    async def submit_task(
        self,
        org: str,
        *,
        role: str | None = None,
        agent: str | None = None,
        payload: Mapping[str, Any] | None = None,
        priority: str | None = None,
        deadline: str | None = None,
        requirements: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        **more: Any,
    ) -> JSON:
        """Submit a task for exactly one of ``role`` or ``agent``."""
        fields = calls.task_fields(
            role, agent, payload, priority, deadline, requirements, idempotency_key, more
        )
        result: JSON = await self.send(calls.task_create(org, fields))
        return result

    async def get_task(self, org: str, task: str) -> JSON:
        result: JSON = await self.send(Call("GET", calls.path("orgs", org, "tasks", task)))
        return result

    async def list_tasks(self, org: str, **filters: Any) -> JSON:
        result: JSON = await self.send(calls.task_list(org, filters))
        return result

    async def cancel_task(self, org: str, task: str) -> JSON:
        call = Call("POST", calls.path("orgs", org, "tasks", task, "cancel"))
        result: JSON = await self.send(call)
        return result

    async def wait_task(
        self, org: str, task: str, *, timeout: float = 3600.0, interval: float = 0.1
    ) -> JSON:
        """The task once it has ended.

        Raises:
            Unavailable: it had not ended within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = await self.get_task(org, task)
            if found["state"] in TERMINAL_STATES:
                return found
            self._deadline_passed(deadline, org, task, timeout)
            await asyncio.sleep(interval)

    async def put_secret(self, org: str, name: str, value: str | bytes) -> JSON:
        result: JSON = await self.send(calls.secret_put(org, name, value))
        return result

    async def list_secrets(self, org: str) -> JSON:
        result: JSON = await self.send(Call("GET", calls.path("orgs", org, "secrets")))
        return result

    async def add_grant(
        self, org: str, *, secret: str, role: str | None = None, agent: str | None = None
    ) -> JSON:
        result: JSON = await self.send(calls.grant_create(org, secret, role, agent))
        return result

    async def metrics(self) -> str:
        """Every tenant's metrics in the Prometheus text format (an admin key)."""
        return str(await self.send(Call("GET", "/metrics")))
