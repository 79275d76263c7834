"""Typed identifiers, so an agent id is never passed where an org id belongs."""

from __future__ import annotations

from typing import NewType

__all__ = ["AgentId", "OrgId", "OrgSlug", "TaskId"]

OrgId = NewType("OrgId", str)  # opaque, stable: ``org_3f9a1c2b7d``
OrgSlug = NewType("OrgSlug", str)  # the DNS-1123 name users type: ``acme-corp``
AgentId = NewType("AgentId", str)  # ``agent-<org>-<name>-<suffix>``
TaskId = NewType("TaskId", str)  # ``task_<hex>``
