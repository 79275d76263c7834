"""Agents for queued work: provision one of the task's role, or wake a paused one, when
placement asks; and if it will not come, let placement try again."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from corral.control.dispatch.snapshot import AgentSnapshot, request_for
from corral.control.lifecycle import Controller
from corral.domain.errors import CorralError
from corral.domain.ids import AgentId
from corral.domain.tenancy import Organization
from corral.scheduling.scheduler import QueuedTask

__all__ = ["Supply"]

log = logging.getLogger("corral.dispatcher")


class Supply:
    def __init__(
        self,
        *,
        controller: Controller,
        snapshot: AgentSnapshot,
        capacity_changed: Callable[[str], None],
    ) -> None:
        self._controller = controller
        self._snapshot = snapshot
        self._capacity_changed = capacity_changed

    async def provision(
        self, org: Organization, task: QueuedTask, key: tuple[str, str | None]
    ) -> None:
        role = task.role or "general"
        try:
            agent = await self._controller.provision(
                org,
                name=f"{role[:20]}-{secrets.token_hex(2)}",
                role=role,
                request=request_for(task.requirements),
            )
            log.info(
                "provisioned %s for queued %s work",
                agent.id,
                role,
                extra={"org": org.slug, "agent": agent.id},
            )
        except CorralError as exc:
            log.warning("could not provision a %s agent for %s: %s", role, org.slug, exc.message)
            self._not_coming(org, key)

    async def wake(self, org: Organization, agent_id: AgentId, key: tuple[str, str | None]) -> None:
        try:
            await self._controller.resume(org, agent_id)
        except CorralError as exc:
            log.warning("could not resume %s: %s", agent_id, exc.message)
            self._not_coming(org, key)

    def _not_coming(self, org: Organization, key: tuple[str, str | None]) -> None:
        """An agent on its way for ``key`` will not come: place its tasks again."""
        self._snapshot.incoming[key] -= 1
        self._snapshot.forget_usage()
        self._capacity_changed(org.id)
