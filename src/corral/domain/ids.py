"""Typed identifiers, so an agent id is never passed where an org id belongs."""

from __future__ import annotations

import os
import re
import threading
import time
from typing import NewType

__all__ = [
    "TASK_ID_PREFIX",
    "AgentId",
    "OrgId",
    "OrgSlug",
    "TaskId",
    "new_task_id",
    "task_created_at",
]

OrgId = NewType("OrgId", str)  # opaque, stable: ``org_3f9a1c2b7d``
OrgSlug = NewType("OrgSlug", str)  # the DNS-1123 name users type: ``acme-corp``
AgentId = NewType("AgentId", str)  # ``agent-<org>-<name>-<suffix>``
TaskId = NewType("TaskId", str)  # ``task_<hex>``

#: Every task id starts so, whether the platform or a delegating agent chose it.
TASK_ID_PREFIX = "task_"


_TIMED = re.compile(r"^task_([0-9a-f]{10})[0-9a-f]{16}$")


class _RandomPool:
    """The operating system's random bytes, asked for 4 KiB at a time: a task id's 8 bytes
    asked for alone cost a system call per task, a few percent of the control plane's time
    when thousands of tasks a second are submitted. Taken under a lock (each byte goes to one
    id only) and dropped in a forked child (which must never repeat its parent's ids)."""

    SIZE = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._drop)

    def hex(self, n: int) -> str:
        with self._lock:
            at = self._at
            if at + n > len(self._bytes):
                self._bytes, at = os.urandom(self.SIZE), 0
            self._at = at + n
            return self._bytes[at : at + n].hex()

    def _drop(self) -> None:
        self._lock = threading.Lock()  # a lock held by another thread at the fork stays held
        self._bytes, self._at = b"", 0


_random = _RandomPool()


def new_task_id(*, now: float | None = None) -> TaskId:
    """A fresh ``task_<10 hex digits: the second it was made><16 random hex digits>``.

    The time in the id lets the platform say, of a task it no longer holds, whether it was
    pruned after its retention period rather than never existed, without keeping a record of
    every pruned id."""
    seconds = int(time.time() if now is None else now)
    return TaskId(f"{TASK_ID_PREFIX}{seconds:010x}{_random.hex(8)}")


def task_created_at(task_id: str) -> float | None:
    """When a task id made by :func:`new_task_id` was made (seconds since the epoch); None
    for an id of another shape (an older one, or one an agent chose)."""
    match = _TIMED.match(task_id)
    return None if match is None else float(int(match.group(1), 16))
