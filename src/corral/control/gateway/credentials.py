"""Agents' gateway credentials: minted at every launch, revoked when the agent stops running.

A credential is a random bearer token handed to the agent in ``OPENAI_API_KEY``; only its
SHA-256 is stored, tied to the org and the agent. It is good while the agent is running (or
starting): pausing, terminating or failing the agent revokes it at once — the controller's
change hook drops it from the cache and the store check refuses any agent not running — and a
new launch mints a new one, which replaces the old.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from corral.control.background import Background
from corral.control.gateway.flights import Flights
from corral.domain.agents import Agent, AgentState
from corral.domain.errors import NotFound, Unauthenticated
from corral.domain.tenancy import Organization
from corral.store.agents import AgentRepository
from corral.store.gateway_repo import GatewayStore

__all__ = ["TOKEN_PREFIX", "GatewayCredentials", "Principal", "token_hash"]

TOKEN_PREFIX = "cgw_"
_LIVE = frozenset({AgentState.RUNNING, AgentState.PROVISIONING, AgentState.RESUMING})
_CACHE_SECONDS = 10.0  # how long an org's plan may be seen stale; revocation is immediate


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling the gateway, from the platform's records (never from the request)."""

    org_id: str
    org_slug: str
    plan: str
    agent_id: str
    role: str


class GatewayCredentials:
    def __init__(
        self,
        store: GatewayStore,
        agents: AgentRepository,
        org_lookup: Callable[[str], Awaitable[Organization]],
    ) -> None:
        self._store = store
        self._agents = agents
        self._org_by_id = org_lookup
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._by_agent: dict[str, str] = {}
        self._flights: Flights[str, Principal] = Flights("gateway-credential")
        self._forgotten = 0  # bumped by every revocation: a lookup across one is not cached
        self._background = Background()

    async def mint(self, org: Organization, agent: Agent) -> str:
        """A new credential for ``agent``; the one it had before stops working."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.forget(agent.id)
        await self._store.put_credential(agent.id, org.id, token_hash(token))
        return token

    async def revoke(self, agent_id: str) -> None:
        self.forget(agent_id)
        await self._store.delete_credential(agent_id)

    def forget(self, agent_id: str) -> None:
        self._forgotten += 1
        known = self._by_agent.pop(agent_id, None)
        if known is not None:
            self._cache.pop(known, None)

    def agent_changed(self, agent: Agent) -> None:
        """The controller's change hook: an agent that stops running loses its credential."""
        if agent.state in _LIVE:
            return
        self.forget(agent.id)
        if agent.state is AgentState.TERMINATED:
            self._background.spawn(self._store.delete_credential(agent.id), f"revoke-{agent.id}")

    async def principal(self, token: str | None) -> Principal:
        """The running agent ``token`` belongs to.

        Raises:
            Unauthenticated: no token, an unknown one, or one of an agent not running (its
                details name the org and agent, for the org's audit log).
        """
        if not token:
            raise Unauthenticated("missing gateway credential: send 'Authorization: Bearer <key>'")
        digest = token_hash(token)
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        return await self._flights.run(digest, lambda: self._look_up(digest))

    async def _look_up(self, digest: str) -> Principal:
        forgotten = self._forgotten
        found = await self._store.credential(digest)
        if found is None:
            raise Unauthenticated("unknown or revoked gateway credential")
        agent_id, org_id = found
        try:
            agent = await self._agents.get(agent_id, org_id=org_id)
            org = await self._org_by_id(org_id)
        except NotFound:
            raise Unauthenticated("unknown or revoked gateway credential") from None
        if agent.state not in _LIVE:
            raise Unauthenticated(
                f"agent {agent_id} is {agent.state.value}: its gateway credential is revoked",
                details={"org": org_id, "agent": agent_id},
            )
        principal = Principal(org.id, org.slug, org.plan.name, agent.id, agent.role)
        if forgotten == self._forgotten:  # no revocation meanwhile
            self._cache[digest] = (principal, time.monotonic() + _CACHE_SECONDS)
            self._by_agent[agent.id] = digest
        return principal

    async def close(self) -> None:
        await self._background.close()
