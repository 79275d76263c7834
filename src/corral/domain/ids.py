"""Typed identifiers, so an agent id is never passed where an org id belongs."""

from __future__ import annotations

import re
import secrets
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


def new_task_id(*, now: float | None = None) -> TaskId:
    """A fresh ``task_<10 hex digits: the second it was made><16 random hex digits>``.

    The time in the id lets the platform say, of a task it no longer holds, whether it was
    pruned after its retention period rather than never existed, without keeping a record of
    every pruned id."""
    seconds = int(time.time() if now is None else now)
    return TaskId(f"{TASK_ID_PREFIX}{seconds:010x}{secrets.token_hex(8)}")


def task_created_at(task_id: str) -> float | None:
    """When a task id made by :func:`new_task_id` was made (seconds since the epoch); None
    for an id of another shape (an older one, or one an agent chose)."""
    match = _TIMED.match(task_id)
    return None if match is None else float(int(match.group(1), 16))
