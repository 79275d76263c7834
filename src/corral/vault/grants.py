"""Grants: an organization allows ``get`` on secrets by name or glob, to a role or an agent.

Like the seed's Kubernetes Role (``resourceNames: [github-token, slack-webhook,
agent-ssh-*]``), but enforced by the vault itself, per agent identity. Nothing is granted by
default; a grant names exactly one role or exactly one agent.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable, Iterable
from datetime import datetime

from corral.domain.agent_auth import AgentIdentity
from corral.domain.errors import InvalidInput, NotFound
from corral.domain.grants import SecretGrant
from corral.domain.ids import OrgId
from corral.domain.secrets import AuditAction, GrantRecord
from corral.vault.audit import AuditLog
from corral.vault.storage import VaultStore

__all__ = ["Grants", "covering_grant", "describe"]


def describe(grant: SecretGrant) -> str:
    """``get agent-ssh-* to role worker`` — for audit details and messages."""
    if grant.agent is not None:
        subject = f"agent {grant.agent}"
    elif grant.role is not None:
        subject = f"role {grant.role}"
    else:
        subject = "every agent"
    return f"get {grant.pattern} to {subject}"


def covering_grant(
    grants: Iterable[GrantRecord], agent: AgentIdentity, secret_name: str
) -> GrantRecord | None:
    """The first grant of the agent's own org that lets it read ``secret_name``."""
    for record in grants:
        if record.org_id == agent.org_id and record.grant.covers(
            agent.agent_id, agent.role, secret_name
        ):
            return record
    return None


class Grants:
    def __init__(
        self, store: VaultStore, audit: AuditLog, *, clock: Callable[[], datetime]
    ) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock

    async def add(self, org_id: OrgId, grant: SecretGrant, *, actor: str) -> GrantRecord:
        """Allow ``get`` on the secrets ``grant.pattern`` matches, to its role or agent.

        Raises:
            InvalidInput: the grant names neither a role nor an agent.
            NotFound: the organization does not exist.
        """
        if (grant.role is None) == (grant.agent is None):
            raise InvalidInput(
                "a grant names exactly one role or one agent",
                details={"fields": ["role", "agent"]},
            )
        record = GrantRecord(
            id=f"grant_{secrets.token_hex(8)}", org_id=org_id, grant=grant, created_at=self._clock()
        )
        await self._store.add_grant(
            record,
            audit=self._audit.entry(
                org_id,
                actor=actor,
                action=AuditAction.GRANT_ADD,
                target=grant.pattern,
                allowed=True,
                detail=f"{record.id}: {describe(grant)}",
            ),
        )
        return record

    async def list(self, org_id: OrgId) -> builtins.list[GrantRecord]:
        return await self._store.list_grants(org_id)

    async def remove(self, org_id: OrgId, grant_id: str, *, actor: str) -> None:
        """Revoke one grant of this org by id.

        Raises:
            NotFound: no such grant in this org (another org's grant ids are not found).
        """
        existing = next((g for g in await self.list(org_id) if g.id == grant_id), None)
        removed = existing is not None and await self._store.remove_grant(
            org_id,
            grant_id,
            audit=self._audit.entry(
                org_id,
                actor=actor,
                action=AuditAction.GRANT_REMOVE,
                target=existing.grant.pattern,
                allowed=True,
                detail=f"{grant_id}: {describe(existing.grant)}",
            ),
        )
        if not removed:
            raise NotFound(f"grant {grant_id!r} not found", details={"grant_id": grant_id})
