"""Typed identifiers, so an agent id is never passed where an org id belongs."""

from __future__ import annotations

import secrets
from typing import NewType

__all__ = ["TASK_ID_PREFIX", "AgentId", "OrgId", "OrgSlug", "TaskId", "new_task_id"]

OrgId = NewType("OrgId", str)  # opaque, stable: ``org_3f9a1c2b7d``
OrgSlug = NewType("OrgSlug", str)  # the DNS-1123 name users type: ``acme-corp``
AgentId = NewType("AgentId", str)  # ``agent-<org>-<name>-<suffix>``
TaskId = NewType("TaskId", str)  # ``task_<hex>``

#: Every task id starts so, whether the platform or a delegating agent chose it.
TASK_ID_PREFIX = "task_"


def new_task_id() -> TaskId:
    """A fresh ``task_<16 hex digits>``."""
    return TaskId(f"{TASK_ID_PREFIX}{secrets.token_hex(8)}")
