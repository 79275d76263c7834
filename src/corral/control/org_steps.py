"""The layers an organization lives in on a running control plane, as
:class:`~corral.control.tenants.OrgStep` s, in the order they are created: its bus account and
streams, its vault, its runtime boundary (and agents), its place in the scheduler. Each is
idempotent both ways (see :mod:`corral.control.tenants` for how they make every org operation
all-or-nothing)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from corral.control.tenants import OrgStep
from corral.domain.agents import AgentState
from corral.domain.errors import CorralError
from corral.domain.ids import OrgId
from corral.domain.tenancy import Organization

if TYPE_CHECKING:
    from corral.control.platform import Platform

__all__ = ["org_steps"]

log = logging.getLogger(__name__)


def org_steps(p: Platform) -> list[OrgStep]:
    async def bus_up(org: Organization) -> None:
        await p.bus.ensure_org(org.slug, org.plan.bus, lazy=True)  # streams: with its 1st agent

    async def bus_down(org: Organization) -> None:
        await p.bus.remove_org(org.slug)

    async def vault_up(org: Organization) -> None:
        return None  # the data key is made with the first secret

    async def vault_down(org: Organization) -> None:
        await p.vault.destroy_org(OrgId(org.id), actor="platform")

    async def runtime_up(org: Organization) -> None:
        # its sandbox uid is given before its first agent starts (Platform.ensure_org_uid)
        await p.runtime.prepare_org(org.slug, labels={**org.labels, **org.annotations})

    async def runtime_down(org: Organization) -> None:
        for agent in await p.agents.find(org_id=org.id):
            if agent.state is not AgentState.TERMINATED:
                try:
                    await p.controller.terminate(org, agent.id, delete_workspace=True)
                except CorralError as exc:  # the runtime's removal below stops it anyway
                    log.warning("terminating %s of %s: %s", agent.id, org.slug, exc.message)
        await p.runtime.remove_org(org.slug)
        p.forget_org_uid(org)

    async def scheduler_up(org: Organization) -> None:
        p.dispatcher.org_changed(org)

    async def scheduler_down(org: Organization) -> None:
        p.dispatcher.org_removed(org)
        p.roles.forget_org(org.id)

    return [
        OrgStep("bus", bus_up, bus_down),
        OrgStep("vault", vault_up, vault_down),
        OrgStep("runtime", runtime_up, runtime_down),
        OrgStep("scheduler", scheduler_up, scheduler_down),
    ]
