"""Launching an agent: its bus credentials, its inbox, its environment and its process.

Provision, resume and every restart start an agent the same way; what differs is what has to
be undone if a later step fails. Each step pushes its own undo, and :func:`undo` runs them in
reverse, so a failed start leaves no process, workspace or credential behind.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable

from corral.control.ports import AgentCredentials, BusPort
from corral.domain.agents import Agent
from corral.domain.errors import CorralError
from corral.domain.tenancy import Organization
from corral.runtime.base import AgentRuntime, LaunchSpec
from corral.store.agents import AgentRepository

__all__ = ["CREDS_TTL_SECONDS", "DEFAULT_AGENT_COMMAND", "AgentEnv", "Launcher", "Undo", "undo"]

log = logging.getLogger("corral.controller")

#: Without --command an agent runs the built-in general-purpose example agent.
DEFAULT_AGENT_COMMAND: tuple[str, ...] = (sys.executable, "-m", "corral.agents.general")
CREDS_TTL_SECONDS = 24 * 3600

Undo = list[Callable[[], Awaitable[None]]]
#: Mints what else one agent's launch needs in its environment (its model gateway
#: credential), returning the variables and the step that revokes them.
AgentEnv = Callable[
    [Organization, Agent], Awaitable[tuple[dict[str, str], Callable[[], Awaitable[None]]]]
]


async def undo(steps: Undo) -> None:
    """Run undo steps in reverse; a failing step is logged and the rest still run."""
    for step in reversed(steps):
        try:
            await step()
        except Exception:  # keep undoing; the original error is what the caller sees
            log.exception("cleanup step failed")


class Launcher:
    def __init__(
        self,
        *,
        agents: AgentRepository,
        bus: BusPort,
        runtime: AgentRuntime,
        extra_env: dict[str, str] | None = None,
        agent_env: AgentEnv | None = None,
        before_launch: Callable[[Organization], Awaitable[None]] | None = None,
    ) -> None:
        self._agents = agents
        #: what the org needs before any of its agents starts (its sandbox uid), done first
        self._before_launch = before_launch
        self._bus = bus
        self._runtime = runtime
        self._extra_env = dict(extra_env or {})
        self._agent_env = agent_env

    def mint(self, org: Organization, agent_id: str) -> AgentCredentials:
        """New bus credentials for the agent (whoever records them pushes their revocation)."""
        return self._bus.mint_agent_creds(org.slug, agent_id, ttl_seconds=CREDS_TTL_SECONDS)

    async def launch(
        self,
        org: Organization,
        agent: Agent,
        steps: Undo,
        *,
        creds: AgentCredentials | None = None,
    ) -> None:
        """Credentials, inbox consumer and process for ``agent``; pushes undo steps.
        ``creds``: minted (:meth:`mint`) and recorded with the agent already, their
        revocation pushed (a provision's, which records them as it creates the agent)."""
        if self._before_launch is not None:
            await self._before_launch(org)
        if creds is None:
            creds = self.mint(org, agent.id)
            steps.append(lambda: self._bus.revoke_agent(org.slug, agent.id))
            await self._agents.update(agent.id, public_key=creds.public_key)
        await self._bus.prepare_agent(org.slug, agent.id)
        own_env: dict[str, str] = {}
        if self._agent_env is not None:
            own_env, revoke = await self._agent_env(org, agent)
            steps.append(revoke)
        fresh = not await self._runtime.workspace_exists(org.slug, agent.id)
        spec = self.spec(org, agent, creds.creds, env=own_env)
        try:
            await self._runtime.start(spec)
        except CorralError:
            if fresh:
                with contextlib.suppress(CorralError):
                    await self._runtime.delete_workspace(org.slug, agent.id)
            raise
        steps.append(lambda: self._runtime.stop(org.slug, agent.id, grace=1.0))
        if fresh:
            steps.append(lambda: self._runtime.delete_workspace(org.slug, agent.id))

    def spec(
        self, org: Organization, agent: Agent, creds: str, *, env: dict[str, str] | None = None
    ) -> LaunchSpec:
        env = {
            **agent.env,  # its role's; never over the platform's own variables
            "CORRAL_ORG": org.slug,
            "CORRAL_ORG_ID": org.id,
            "CORRAL_AGENT_ID": agent.id,
            "CORRAL_AGENT_NAME": agent.name,
            "CORRAL_ROLE": agent.role,
            "CORRAL_NATS_URL": self._bus.url,
            "CORRAL_AGENT_SLOTS": str(agent.slots),
            "CORRAL_MAX_PAYLOAD": str(org.plan.bus.max_payload),
            "CORRAL_MAX_OBJECT": str(org.plan.max_document_bytes),
            "CORRAL_INGRESS_BYTES": str(org.plan.bus.ingress_bytes_per_second),
            **self._extra_env,
            **(env or {}),
        }
        return LaunchSpec(
            org=org.slug,
            org_id=org.id,
            agent_id=agent.id,
            name=agent.name,
            role=agent.role,
            resources=agent.resources,
            command=agent.command,
            env=env,
            creds=creds,
        )
