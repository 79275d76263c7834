"""Adopting agents another control plane started: replicas take over each other's agents.

With replicas (docs/ha.md) a leader that dies must not take its agents with it: their tasks
would be lost and the new leader would spend seconds restarting them. So a replica's fork
servers are started to outlive it (:mod:`.forkserver`, ``--orphan``): once their control plane
is gone they keep their children for a while, and the next leader on the same host adopts
each agent whose process is still alive (:meth:`~.runtime.LocalProcessRuntime.adopt`).

What adopting is:

- **finding it**: the agent's ``agent.pid`` names its process and the fork server keeping it,
  each with its start time, and the host (boot and PID namespace) where those pids mean
  something. An agent of another host, or whose keeper is gone, is not adoptable: it is
  restarted as before.
- **watching it**: the adopter is not the agent's parent, so it watches a pidfd
  (:class:`AdoptedChild`), which says when the process ends but not its status.
- **keeping it**: the adopter tells each keeper, with SIGUSR1 at least every quarter of the
  keeper's window, that its children are supervised again (:func:`keep`); a keeper nobody
  tells ends its children.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from corral.runtime.local.processes import ProcessRef, read_ref

__all__ = ["AdoptedChild", "find", "keep"]

UNKNOWN_STATUS = 1  # what an adopted agent's exit is reported as: its parent alone knew


class AdoptedChild:
    """An agent's process this control plane did not start: watched through a pidfd."""

    def __init__(self, ref: ProcessRef, fd: int) -> None:
        self._pid = ref.pid
        self._fd = fd

    @classmethod
    def open(cls, ref: ProcessRef) -> AdoptedChild | None:
        """Watch ``ref``'s process; None if it is no longer the process recorded."""
        try:
            fd = os.pidfd_open(ref.pid)
        except OSError:
            return None
        if not ref.is_alive():  # the pid was reused before the pidfd held it
            os.close(fd)
            return None
        return cls(ref, fd)

    @property
    def pid(self) -> int:
        return self._pid

    async def wait(self) -> int:
        """Once the process has ended: :data:`UNKNOWN_STATUS` (only its parent learns it)."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ended.done():
                ended.set_result(None)

        loop.add_reader(self._fd, readable)
        try:
            await ended
        finally:
            loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        return UNKNOWN_STATUS


def find(pidfile: Path) -> tuple[ProcessRef, AdoptedChild] | None:
    """The agent ``pidfile`` records, watched, if it can be adopted: alive on this host and
    kept by a fork server, whose window starts again at once. Blocking (``/proc``)."""
    ref = read_ref(pidfile)
    if ref is None or not ref.keeper_alive():
        return None
    child = AdoptedChild.open(ref)
    if child is None:
        return None
    keep([ref])
    return ref, child


def keep(refs: list[ProcessRef]) -> int:
    """Tell the keepers of these adopted agents that they are supervised; how many were told."""
    told: set[int] = set()
    for ref in refs:
        if ref.keeper in told or not ref.keeper_alive():
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(ref.keeper, signal.SIGUSR1)
            told.add(ref.keeper)
    return len(told)
