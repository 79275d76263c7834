"""The two clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), with the
same methods, over httpx.

Each method is one call of the REST API (``docs`` at ``/docs`` of a running platform), built
once in :mod:`corral.client.calls` — whose signature and docstring it has — and sent by the
client: the request body goes through the API's own models first (an
:class:`~corral.domain.errors.InvalidInput` before anything is sent), the answer comes back
as the API's answer model (:mod:`corral.api.answers`: frozen, typed, snake_case attributes),
and an error answer is raised as the platform's error tree (``NotFound``, ``Conflict``,
``QuotaExceeded``, ``PermissionDenied``, ``RateLimited``, ``Unavailable``...).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import httpx

from corral.api import answers
from corral.client import calls
from corral.client.calls import TERMINAL_STATES, Call
from corral.domain import errors

__all__ = ["AsyncClient", "Client"]

DEFAULT_TIMEOUT = 30.0

P = ParamSpec("P")
T = TypeVar("T")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _timeout(call: Call[Any]) -> Any:
    return call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT


def _out_of_time(deadline: float, org: str, task: str, timeout: float) -> None:
    if time.monotonic() > deadline:
        raise errors.Unavailable(f"task {task} of {org} did not end within {timeout:g}s")


def _blocking(build: Callable[P, Call[T]]) -> Callable[Concatenate[Client, P], T]:
    """``build`` as a method of :class:`Client`: build the call, send it, read the answer."""

    @functools.wraps(build)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.send(build(*args, **kwargs))

    return method


def _awaited(build: Callable[P, Call[T]]) -> Callable[Concatenate[AsyncClient, P], Awaitable[T]]:
    """``build`` as a method of :class:`AsyncClient`."""

    @functools.wraps(build)
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.send(build(*args, **kwargs))

    return method


class Client:
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

    def send(self, call: Call[T]) -> T:
        """Send one call; what its answer reads as, or the error of the tree it stands for."""
        try:
            resp = self._http.request(
                call.method, call.path, json=call.json, params=call.params, timeout=_timeout(call)
            )
        except httpx.HTTPError as exc:
            raise calls.unreachable(self.url, call, exc) from exc
        return call.read(calls.answer(resp))

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any call of the API by method and path (``json=``, ``params=``, ``timeout=``): its
        JSON answer."""
        return self.send(Call(method, path, **kwargs))

    def wait_task(
        self, org: str, task: str, *, timeout: float = 3600.0, interval: float = 0.1
    ) -> answers.TaskDetail:
        """The task once it has ended (completed, blocked, failed, cancelled, expired).

        Raises:
            Unavailable: it had not ended within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.get_task(org, task)
            if found.state in TERMINAL_STATES:
                return found
            _out_of_time(deadline, org, task, timeout)
            time.sleep(interval)

    create_org = _blocking(calls.create_org)
    list_orgs = _blocking(calls.list_orgs)
    get_org = _blocking(calls.get_org)
    org_usage = _blocking(calls.org_usage)
    provision_agent = _blocking(calls.provision_agent)
    list_agents = _blocking(calls.list_agents)
    get_agent = _blocking(calls.get_agent)
    pause_agent = _blocking(calls.pause_agent)
    resume_agent = _blocking(calls.resume_agent)
    terminate_agent = _blocking(calls.terminate_agent)
    agent_logs = _blocking(calls.agent_logs)
    submit_task = _blocking(calls.submit_task)
    submit_tasks = _blocking(calls.submit_tasks)
    get_task = _blocking(calls.get_task)
    list_tasks = _blocking(calls.list_tasks)
    cancel_task = _blocking(calls.cancel_task)
    list_roles = _blocking(calls.list_roles)
    get_role = _blocking(calls.get_role)
    put_secret = _blocking(calls.put_secret)
    list_secrets = _blocking(calls.list_secrets)
    add_grant = _blocking(calls.add_grant)
    list_grants = _blocking(calls.list_grants)
    audit = _blocking(calls.audit)
    model_usage = _blocking(calls.model_usage)
    metrics = _blocking(calls.metrics)


class AsyncClient:
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

    async def send(self, call: Call[T]) -> T:
        """Send one call; what its answer reads as, or the error of the tree it stands for."""
        try:
            resp = await self._http.request(
                call.method, call.path, json=call.json, params=call.params, timeout=_timeout(call)
            )
        except httpx.HTTPError as exc:
            raise calls.unreachable(self.url, call, exc) from exc
        return call.read(calls.answer(resp))

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any call of the API by method and path (``json=``, ``params=``, ``timeout=``): its
        JSON answer."""
        return await self.send(Call(method, path, **kwargs))

    async def wait_task(
        self, org: str, task: str, *, timeout: float = 3600.0, interval: float = 0.1
    ) -> answers.TaskDetail:
        """The task once it has ended (completed, blocked, failed, cancelled, expired).

        Raises:
            Unavailable: it had not ended within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = await self.get_task(org, task)
            if found.state in TERMINAL_STATES:
                return found
            _out_of_time(deadline, org, task, timeout)
            await asyncio.sleep(interval)

    create_org = _awaited(calls.create_org)
    list_orgs = _awaited(calls.list_orgs)
    get_org = _awaited(calls.get_org)
    org_usage = _awaited(calls.org_usage)
    provision_agent = _awaited(calls.provision_agent)
    list_agents = _awaited(calls.list_agents)
    get_agent = _awaited(calls.get_agent)
    pause_agent = _awaited(calls.pause_agent)
    resume_agent = _awaited(calls.resume_agent)
    terminate_agent = _awaited(calls.terminate_agent)
    agent_logs = _awaited(calls.agent_logs)
    submit_task = _awaited(calls.submit_task)
    submit_tasks = _awaited(calls.submit_tasks)
    get_task = _awaited(calls.get_task)
    list_tasks = _awaited(calls.list_tasks)
    cancel_task = _awaited(calls.cancel_task)
    list_roles = _awaited(calls.list_roles)
    get_role = _awaited(calls.get_role)
    put_secret = _awaited(calls.put_secret)
    list_secrets = _awaited(calls.list_secrets)
    add_grant = _awaited(calls.add_grant)
    list_grants = _awaited(calls.list_grants)
    audit = _awaited(calls.audit)
    model_usage = _awaited(calls.model_usage)
    metrics = _awaited(calls.metrics)
