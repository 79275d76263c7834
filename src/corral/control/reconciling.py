"""The reconciler: what the records say against what runs, at start and every few seconds.

At start every agent process left from before is stopped or restarted (its work was lost with
the control plane) and interrupted pauses are finished. Afterwards, periodically, two
inconsistencies that no event announces are repaired:

- an agent recorded ``running`` whose process is gone (its exit was never heard): it is
  restarted as after a crash, and the work it held is retried;
- an agent left ``provisioning`` or ``resuming`` with no process and no start under way (a
  start that failed while the bus did not answer, say): it is started again;
- work held (``dispatched``/``running``) by an agent that is not running (it was paused,
  terminated, failed, or is unknown) and that nobody has released: each task is a lost
  attempt, retried as its policy allows or ``failed`` with the reason.

An inconsistency is repaired only when two checks in a row see it, so that an exit or a pause
whose news is on its way is not handled twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from corral.control.dispatch import Dispatcher
from corral.control.lifecycle import Controller
from corral.domain import repairs
from corral.domain.agents import AgentState
from corral.domain.errors import CorralError, NotFound
from corral.domain.repairs import Repair
from corral.domain.tenancy import Organization
from corral.runtime.base import AgentRuntime, Phase
from corral.store.agents import AgentRepository

__all__ = ["Findings", "Reconciler"]

log = logging.getLogger("corral.reconciler")


@dataclass
class Findings:
    """What one check repaired: the agents restarted and the agents whose work was retried."""

    restarted: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(
        self,
        *,
        agents: AgentRepository,
        org_by_id: Callable[[str], Awaitable[Organization]],
        runtime: AgentRuntime,
        controller: Controller,
        dispatcher: Dispatcher,
        every: float = 10.0,
    ) -> None:
        self._agents = agents
        self._org_by_id = org_by_id
        self._runtime = runtime
        self._controller = controller
        self._dispatcher = dispatcher
        self.every = every
        self.checks = 0
        self._no_process: set[str] = set()  # seen running without a process by the last check
        self._orphaned: set[str] = set()  # seen holding work while not running by the last check
        self._stalled: set[str] = set()  # seen starting with no start under way by the last check

    # -- periodically ---------------------------------------------------------------------
    async def run(self) -> None:
        """Check every ``every`` seconds, forever (a failed check is logged, not fatal)."""
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.check()
            except CorralError as exc:
                log.warning("reconciliation failed: %s", exc.message)

    async def check(self) -> Findings:
        """One look at the agents and the work in flight; repairs what two looks in a row
        found wrong."""
        self.checks += 1
        found = Findings()
        running = await self._agents.find(states=[AgentState.RUNNING])
        no_process: set[str] = set()
        for agent in running:
            org = await self._org_by_id(agent.org_id)
            status = await self._runtime.status(org.slug, agent.id)
            what = repairs.repair(
                agent.state, process_running=status.phase is Phase.RUNNING, after_restart=False
            )
            if what is not Repair.RESTART:
                continue
            no_process.add(agent.id)
            if agent.id in self._no_process:
                log.warning("%s is running without a process: restarting it", agent.id)
                found.restarted.append(agent.id)
                await self._controller.restart_hung(org, agent.id, "it had no process")
        self._no_process = no_process - set(found.restarted)
        await self._stalled_starts(found)

        live = {a.id for a in running}
        orphaned: set[str] = set()
        for agent_id in self._dispatcher.holders():
            if agent_id in live:
                continue
            why = await self._work_lost(agent_id)
            if why is None:
                continue
            orphaned.add(agent_id)
            if agent_id in self._orphaned:
                log.warning("work held by %s is lost (%s): retrying it", agent_id, why)
                found.released.append(agent_id)
                await self._dispatcher.agent_lost(agent_id, why=why)
        self._orphaned = orphaned - set(found.released)
        return found

    async def _stalled_starts(self, found: Findings) -> None:
        starting = await self._agents.find(
            states=[AgentState.PROVISIONING, AgentState.RESUMING, AgentState.PAUSING]
        )
        stalled: set[str] = set()
        for agent in starting:
            org = await self._org_by_id(agent.org_id)
            status = await self._runtime.status(org.slug, agent.id)
            what = repairs.repair(
                agent.state,
                process_running=status.phase is Phase.RUNNING,
                after_restart=False,
                start_under_way=self._controller.restarting(agent.id),
            )
            if what not in (Repair.RESTART, Repair.FINISH_PAUSE):
                continue
            stalled.add(agent.id)
            if agent.id not in self._stalled:
                continue
            found.restarted.append(agent.id)
            if what is Repair.RESTART:
                log.warning(
                    "%s is %s with no process: starting it again", agent.id, agent.state.value
                )
                self._controller.start_again(org, agent.id)
                continue
            log.warning("%s is pausing with no process: finishing its pause", agent.id)
            try:
                await self._controller.finish_stalled_pause(org, agent.id)
            except CorralError as exc:  # the bus is away, say: the next check tries again
                log.warning("finishing the pause of %s failed: %s", agent.id, exc.message)
        self._stalled = stalled - set(found.restarted)

    async def _work_lost(self, agent_id: str) -> str | None:
        """Why the work ``agent_id`` holds is lost (None: it runs it, or will say so itself)."""
        try:
            state: AgentState | None = (await self._agents.get(agent_id)).state
        except NotFound:
            state = None
        return repairs.work_lost(agent_id, state, after_restart=False)
