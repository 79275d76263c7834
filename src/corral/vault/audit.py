"""The per-organization audit log of the vault: who did what to which secret or grant.

Every secret write, delete, read, denial and grant change is recorded with its actor,
action, target, whether it was allowed, when, and a detail that never holds a value. An org
reads only its own records; they outlive the org's secrets (crypto-shredding keeps the log).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from corral.domain.errors import InvalidInput
from corral.domain.ids import OrgId
from corral.domain.secrets import MAX_AUDIT_PAGE, AuditAction, AuditEntry, AuditRecord
from corral.vault.storage import VaultStore

__all__ = ["MAX_PAGE", "AuditLog"]

MAX_PAGE = MAX_AUDIT_PAGE
_MAX_ACTOR = 160
_MAX_TARGET = 253
_MAX_DETAIL = 1000


def _clip(text: str, limit: int) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class AuditLog:
    def __init__(self, store: VaultStore, *, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock

    def entry(
        self,
        org_id: OrgId,
        *,
        actor: str,
        action: AuditAction,
        target: str,
        allowed: bool,
        detail: str = "",
    ) -> AuditEntry:
        """An entry stamped now, its fields clipped to what the log holds. Callers pass
        names and reasons, never values; claimed (untrusted) strings are clipped here."""
        return AuditEntry(
            org_id=org_id,
            actor=_clip(actor, _MAX_ACTOR),
            action=action,
            target=_clip(target, _MAX_TARGET),
            allowed=allowed,
            at=self._clock(),
            detail=_clip(detail, _MAX_DETAIL),
        )

    async def record(
        self,
        org_id: OrgId,
        *,
        actor: str,
        action: AuditAction,
        target: str,
        allowed: bool,
        detail: str = "",
    ) -> None:
        await self._store.append_audit(
            self.entry(
                org_id, actor=actor, action=action, target=target, allowed=allowed, detail=detail
            )
        )

    async def list(
        self, org_id: OrgId, *, limit: int = 100, before_id: int | None = None
    ) -> list[AuditRecord]:
        """The org's records, newest first; page with ``before_id`` = the last id seen.

        Raises:
            InvalidInput: ``limit`` is not between 1 and 1000, or ``before_id`` is negative.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(
                f"limit must be between 1 and {MAX_PAGE}", details={"field": "limit"}
            )
        if before_id is not None and (isinstance(before_id, bool) or before_id < 0):
            raise InvalidInput("before_id must be a record id", details={"field": "before_id"})
        return await self._store.list_audit(org_id, limit=limit, before_id=before_id)
