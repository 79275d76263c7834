"""Where one agent's provision → ready goes: timestamps at each step, on both sides of the
fork server, for agents provisioned one at a time.

The steps are the platform's own methods, wrapped here (class-wide, for this benchmark
process only) so that each records the moment it began or returned against the agent being
provisioned. Nothing of the platform is changed to measure it. The agent's side (from the
moment the fork server's child reported its set-up done to its ready message reaching the
control plane) is one step seen from here: the agent's run of its module, its bus connect,
its subscriptions and its ready message.

Use::

    clock = Phases()
    clock.install()
    with clock.agent("seq-0"):
        ...  # provision and wait until ready
    clock.report()
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from corral.bus.platform import PlatformBus
from corral.control.dispatch.events import AgentEvents
from corral.control.lifecycle import Controller
from corral.control.records import AgentRecords
from corral.domain.messages import StatusKind
from corral.runtime.local.confinement import Confinement
from corral.runtime.local.forkclient import Zygote
from corral.runtime.local.forkpool import ForkServerPool
from corral.runtime.local.runtime import LocalProcessRuntime
from corral.store.agents import AgentRepository
from corral.store.gateway_repo import GatewayStore
from corral.store.quota import QuotaLedger

__all__ = ["Phases"]


class Phases:
    """Marks per agent: (label, seconds since the provision began)."""

    def __init__(self) -> None:
        self.marks: dict[str, list[tuple[str, float]]] = defaultdict(list)
        self._current: str | None = None
        self._t0 = 0.0

    @contextlib.contextmanager
    def agent(self, key: str) -> Iterator[None]:
        self._current, self._t0 = key, time.perf_counter()
        try:
            yield
        finally:
            self.mark("wait_running returned")
            self._current = None

    def reset(self) -> None:
        """Forget every mark (a new run)."""
        self.marks.clear()

    def mark(self, label: str) -> None:
        if self._current is not None:
            self.marks[self._current].append((label, time.perf_counter() - self._t0))

    def _is_current(self, agent_id: str) -> bool:
        """Whether ``agent_id`` (``agent-<org>-<name>-<suffix>``) is the one being measured."""
        return self._current is not None and f"-{self._current}-" in agent_id

    def _seen(self, label: str) -> bool:
        return self._current is not None and any(n == label for n, _ in self.marks[self._current])

    def install(self) -> None:
        """Wrap the steps of a provision (see the module's docstring)."""
        self._around(QuotaLedger, "reserve", after="quota reserved (store)")
        self._around(AgentRepository, "create", after="agent row created (store)")
        self._around(PlatformBus, "mint_agent_creds", after="credentials minted", sync=True)
        self._around(PlatformBus, "prepare_agent", after="inbox stream/consumer (bus)")
        self._around(GatewayStore, "put_credential", after="model gateway credential (store)")
        self._around(LocalProcessRuntime, "start", before="runtime start called")
        self._around(Confinement, "policy", after="sandbox policy built", sync=True)
        self._around(ForkServerPool, "server_for", before="dirs, creds file, limits",
                     after="fork server found")  # fmt: skip
        self._around(Zygote, "_send", after="spawn request sent")
        self._around(Zygote, "_read_to_end", after="child set up (sandbox applied), report ok")
        self._around(LocalProcessRuntime, "start", after="runtime start returned")
        self._around(Controller, "provision", after="provision() returned")
        self._around(Controller, "heard_from", after="agent heard from (store)", own=1)
        self._around(Controller, "on_ready", after="ready recorded (store)", own=2)
        self._around(AgentRecords, "wait_running", before="wait_running called")
        original = Zygote._handle_record
        clock = self

        def handle_record(zygote: Zygote, record: bytes) -> None:
            if record.startswith(b"spawned"):
                clock.mark("forked (fork server's answer)")
            original(zygote, record)

        Zygote._handle_record = handle_record  # type: ignore[method-assign,assignment]
        handle = AgentEvents.handle

        async def on_event(events: AgentEvents, event: Any) -> None:
            ready = getattr(event.message, "status", None) is StatusKind.READY
            if ready and clock._is_current(str(event.agent_id)):
                clock.mark("agent ran, connected, said ready (message in)")
            await handle(events, event)

        AgentEvents.handle = on_event  # type: ignore[method-assign,assignment]

    def _around(
        self,
        cls: type,
        name: str,
        *,
        before: str | None = None,
        after: str | None = None,
        sync: bool = False,
        once: bool = False,
        own: int | None = None,
    ) -> None:
        """``once``: mark only the first call of the agent's provision; ``own``: mark only
        calls whose argument at that position is the agent's id (another agent's heartbeat
        may arrive meanwhile)."""
        original: Callable[..., Any] = getattr(cls, name)
        clock = self
        if sync:

            @functools.wraps(original)
            def wrapped_sync(*args: Any, **kwargs: Any) -> Any:
                if before:
                    clock.mark(before)
                result = original(*args, **kwargs)
                if after:
                    clock.mark(after)
                return result

            setattr(cls, name, wrapped_sync)
            return

        @functools.wraps(original)
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            first = not once or not clock._seen(after or before or "")
            if own is not None and not clock._is_current(str(args[own])):
                first = False
            if before and first:
                clock.mark(before)
            result = await original(*args, **kwargs)
            if after and first:
                clock.mark(after)
            return result

        setattr(cls, name, wrapped)

    def rows(self, skip_first: bool = True) -> list[tuple[str, float, float]]:
        """(step, p50 ms, share of the total p50) in the order the steps happen; a step is the
        time from the previous mark to its own. The first agent (which also starts the fork
        server) is left out with ``skip_first``."""
        keys = list(self.marks)[1:] if skip_first and len(self.marks) > 1 else list(self.marks)
        steps: dict[str, list[float]] = defaultdict(list)
        order: list[str] = []
        totals = []
        for key in keys:
            per: dict[str, float] = defaultdict(float)
            last = 0.0
            for label, at in self.marks[key]:
                per[label] += at - last
                last = at
                if label not in order:
                    order.append(label)
            totals.append(last)
            for label, spent in per.items():
                steps[label].append(spent)
        total = statistics.median(totals) if totals else float("nan")
        out = [
            (label, statistics.median(steps[label]) * 1000, statistics.median(steps[label]) / total)
            for label in order
        ]
        out.append(("total (provision → wait_running returned)", total * 1000, 1.0))
        return out

    def lines(self, title: str) -> list[str]:
        """The breakdown as printable lines."""
        out = [f"{title}: where provision → ready goes (p50 of each step, n={len(self.marks) - 1},"
               " the first agent left out)"]  # fmt: skip
        for label, ms, share in self.rows():
            out.append(f"  {label:<56} {ms:8.2f} ms  {share:6.1%}")
        return out
