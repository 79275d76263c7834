"""The agent records as the controller keeps them: every state change held to the domain's
agent state machine, one lock per agent for the operations that must not interleave, and news
of each recorded change to the hub and to whoever listens (the dispatcher).

This is the base of :class:`~corral.control.lifecycle.Controller`; nothing else writes an
agent's lifecycle state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from corral.control.hub import EventHub
from corral.domain.agents import Agent, AgentState, require_transition
from corral.domain.errors import CorralError, Unavailable
from corral.domain.tenancy import Organization
from corral.runtime.base import AgentRuntime
from corral.store.agents import AgentRepository

__all__ = ["AgentRecords"]

LOG_TAIL = 20  # lines of an agent's log shown to whoever waits when it exits before ready


async def _nothing_lost(agent_id: str, why: str | None = None) -> None:
    return None


class AgentRecords:
    def __init__(self, *, agents: AgentRepository, hub: EventHub, runtime: AgentRuntime) -> None:
        self.agents = agents
        self.hub = hub
        self.runtime = runtime
        self._ready_waiters: dict[str, list[asyncio.Future[Agent | None]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: told the org id whenever quota is released (pause, terminate, failure)
        self.on_capacity: Callable[[str], None] = lambda org_id: None
        #: told every agent whose lifecycle state it records (after the record)
        self.on_change: Callable[[Agent], None] = lambda agent: None
        #: told, and awaited, when an agent stops running the work it was given: its id and
        #: why, in words for the history of the tasks it held
        self.on_lost: Callable[[str, str | None], Awaitable[None]] = _nothing_lost
        #: asked which task an agent is busy with (``None``: it holds none)
        self.current_task: Callable[[str], str | None] = lambda agent_id: None

    # -- questions ------------------------------------------------------------------------
    async def find_agents(
        self,
        org: Organization,
        *,
        terminated: bool = False,
        states: Sequence[AgentState] | None = None,
        search: str | None = None,
        newest: int | None = None,
    ) -> list[Agent]:
        """The agents of ``org``, oldest first: those in ``states`` when it is given, else
        every one but the terminated (with ``terminated``, those too); ``search``: whose name
        or id contains it; ``newest``: only the newest so many."""
        agents = await self.agents.find(org_id=org.id, states=states, search=search, newest=newest)
        if terminated or states is not None:
            return agents
        return [a for a in agents if a.state is not AgentState.TERMINATED]

    async def agent_history(
        self, org: Organization, agent_id: str, *, newest: int = 50
    ) -> list[tuple[str, datetime, str]]:
        """The newest states the agent entered (state, when, why), oldest first.

        Raises:
            NotFound: no such agent in ``org``.
        """
        agent = await self.agents.resolve(agent_id, org_id=org.id)
        return await self.agents.history(agent.id, newest=newest)

    async def get_agent(self, org: Organization, agent: str) -> Agent:
        """The agent of ``org`` whose id or (live agent's) name is ``agent``.

        Raises:
            NotFound: no such agent in ``org``.
        """
        return await self.agents.resolve(agent, org_id=org.id)

    def _lock(self, agent_id: str) -> asyncio.Lock:
        return self._locks.setdefault(agent_id, asyncio.Lock())

    async def _transition(
        self, agent_id: str, *, expect: Sequence[AgentState], to: AgentState, **fields: Any
    ) -> bool:
        """Move the agent from one of ``expect`` to ``to`` if it is in one of them (a
        compare-and-set in the store); False if it was in none.

        Raises:
            Conflict: the agent state machine has no edge from one of ``expect`` to ``to``.
        """
        for state in expect:
            require_transition(agent_id, state, to)
        return await self.agents.transition(agent_id, expect=list(expect), to=to, **fields)

    async def _move(
        self,
        org: str,
        agent_id: str,
        *,
        expect: Sequence[AgentState],
        to: AgentState,
        **fields: Any,
    ) -> Agent | None:
        """:meth:`_transition` that returns the agent as it now is (``org``: its slug), read
        in the write that moved it; None if it was in none of ``expect``."""
        for state in expect:
            require_transition(agent_id, state, to)
        return await self.agents.moved(agent_id, org=org, expect=list(expect), to=to, **fields)

    def _publish(self, agent: Agent) -> None:
        self.on_change(agent)
        data: dict[str, Any] = {"agent": agent.to_wire()}
        self.hub.publish(agent.org, "agent", data)

    # -- what the API asks of a running agent -------------------------------------------
    async def agent_logs(self, org: Organization, agent_id: str, *, tail: int = 200) -> str:
        """The last ``tail`` lines the agent's process wrote.

        Raises:
            NotFound: no such agent in ``org``.
        """
        await self.agents.get(agent_id, org_id=org.id)
        return await self.runtime.logs(org.slug, agent_id, tail=tail)

    async def sandbox_level(self, org: Organization, agent_id: str) -> str | None:
        """How the agent's running process is confined ("strict", "best-effort (missing:
        ...)", "off"), as its runtime says; None when it runs nowhere (or on Kubernetes)."""
        status = await self.runtime.status(org.slug, agent_id)
        return status.detail.get("sandbox")

    # -- readiness ------------------------------------------------------------------------
    async def wait_running(self, agent_id: str, *, timeout: float) -> Agent:
        """Wait until the agent is running (for CLI ``--wait`` and tests)."""
        # waiting before looking: a ready that lands between the two is not missed
        fut: asyncio.Future[Agent | None] = asyncio.get_running_loop().create_future()
        self._ready_waiters.setdefault(agent_id, []).append(fut)
        try:
            agent = await self.agents.get(agent_id)
            if agent.state is AgentState.RUNNING:
                return agent
            try:
                ready = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise Unavailable(
                    f"agent {agent_id} did not report ready within {timeout:g}s "
                    f"(state {agent.state.value}; see `corral agent logs`)"
                ) from None
        finally:
            waiters = self._ready_waiters.get(agent_id)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._ready_waiters[agent_id]
            if fut.done() and not fut.cancelled():
                fut.exception()  # news it no longer waited for (it was running already)
        return ready if ready is not None else await self.agents.get(agent_id)

    async def _exited_before_ready(
        self, org_slug: str, agent_id: str, how: str, *, then: str
    ) -> None:
        """The agent's process ended before it reported ready: whoever waits hears it now,
        with the last lines it wrote (a wrong command, a missing file, an import error), not
        at the end of their wait."""
        try:
            lines = (await self.runtime.logs(org_slug, agent_id, tail=LOG_TAIL)).strip()
        except CorralError:
            lines = ""
        shown = "\n".join(f"  | {line}" for line in lines.splitlines()) or "  (it wrote nothing)"
        error = Unavailable(
            f"agent {agent_id} exited before it was ready ({how}); the last lines of its "
            f"log:\n{shown}\n{then}; `corral agent terminate` removes it",
            details={"agent": agent_id, "exit": how, "log": lines},
        )
        for fut in self._ready_waiters.pop(agent_id, []):
            if not fut.done():
                fut.set_exception(error)

    def _waited_for(self, agent_id: str) -> bool:
        return bool(self._ready_waiters.get(agent_id))

    def _ready(self, agent_id: str, agent: Agent | None = None) -> None:
        """The agent reported ready (``agent``: as it is now, if known): wake whoever waits
        for it."""
        for fut in self._ready_waiters.pop(agent_id, []):
            if not fut.done():
                fut.set_result(agent)
