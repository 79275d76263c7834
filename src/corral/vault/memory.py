"""An in-memory ``VaultStore`` for tests of the layers above the vault.

It behaves like ``corral.store.vault_repo.SqlVaultStore`` (the vault's tests run against
both), including the org check when ``orgs`` is given; it keeps nothing across restarts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from corral.domain.errors import NotFound
from corral.domain.ids import OrgId
from corral.domain.secrets import (
    AuditEntry,
    AuditRecord,
    DataKeyRecord,
    GrantRecord,
    SecretInfo,
    SecretRecord,
)

__all__ = ["InMemoryVaultStore"]


class InMemoryVaultStore:
    def __init__(self, *, orgs: Iterable[str] | None = None) -> None:
        self.orgs: set[str] | None = None if orgs is None else set(orgs)
        self.data_keys: dict[str, DataKeyRecord] = {}
        self.secrets: dict[tuple[str, str], SecretRecord] = {}
        self.grants: dict[str, GrantRecord] = {}
        self.audit: list[AuditRecord] = []

    def _require_org(self, org_id: str) -> None:
        if self.orgs is not None and org_id not in self.orgs:
            raise NotFound(f"organization {org_id} not found", details={"org_id": org_id})

    def remove_org(self, org_id: str) -> None:
        """Like deleting the organization row: cascades to keys, secrets and grants."""
        if self.orgs is not None:
            self.orgs.discard(org_id)
        self._destroy(org_id)

    def _destroy(self, org_id: str) -> bool:
        had_key = self.data_keys.pop(org_id, None) is not None
        for key in [k for k in self.secrets if k[0] == org_id]:
            del self.secrets[key]
        for gid in [g for g, r in self.grants.items() if r.org_id == org_id]:
            del self.grants[gid]
        return had_key

    async def get_data_key(self, org_id: OrgId) -> DataKeyRecord | None:
        return self.data_keys.get(org_id)

    async def create_data_key(self, record: DataKeyRecord, *, audit: AuditEntry) -> DataKeyRecord:
        self._require_org(record.org_id)
        if record.org_id not in self.data_keys:
            self.data_keys[record.org_id] = record
            await self.append_audit(audit)
        return self.data_keys[record.org_id]

    async def list_data_keys(self) -> list[DataKeyRecord]:
        return sorted(self.data_keys.values(), key=lambda r: r.org_id)

    async def replace_data_key(
        self, record: DataKeyRecord, *, expected_master_key_id: str, audit: AuditEntry
    ) -> bool:
        current = self.data_keys.get(record.org_id)
        if current is None or current.master_key_id != expected_master_key_id:
            return False
        self.data_keys[record.org_id] = dataclasses.replace(
            current, wrapped_key=record.wrapped_key, master_key_id=record.master_key_id
        )
        await self.append_audit(audit)
        return True

    async def get_secret(self, org_id: OrgId, name: str) -> SecretRecord | None:
        return self.secrets.get((org_id, name))

    async def get_secret_info(self, org_id: OrgId, name: str) -> SecretInfo | None:
        found = self.secrets.get((org_id, name))
        return None if found is None else found.info

    async def list_secrets(self, org_id: OrgId) -> list[SecretInfo]:
        return [r.info for k, r in sorted(self.secrets.items()) if k[0] == org_id]

    async def write_secret(
        self, record: SecretRecord, *, expected_version: int, audit: AuditEntry
    ) -> bool:
        self._require_org(record.org_id)
        current = self.secrets.get((record.org_id, record.name))
        if (0 if current is None else current.version) != expected_version:
            return False
        if current is not None:
            record = dataclasses.replace(record, created_at=current.created_at)
        self.secrets[(record.org_id, record.name)] = record
        await self.append_audit(audit)
        return True

    async def delete_secret(self, org_id: OrgId, name: str, *, audit: AuditEntry) -> bool:
        if self.secrets.pop((org_id, name), None) is None:
            return False
        await self.append_audit(audit)
        return True

    async def add_grant(self, record: GrantRecord, *, audit: AuditEntry) -> None:
        self._require_org(record.org_id)
        self.grants[record.id] = record
        await self.append_audit(audit)

    async def list_grants(self, org_id: OrgId) -> list[GrantRecord]:
        found = [r for r in self.grants.values() if r.org_id == org_id]
        return sorted(found, key=lambda r: (r.created_at, r.id))

    async def remove_grant(self, org_id: OrgId, grant_id: str, *, audit: AuditEntry) -> bool:
        found = self.grants.get(grant_id)
        if found is None or found.org_id != org_id:
            return False
        del self.grants[grant_id]
        await self.append_audit(audit)
        return True

    async def destroy_org(self, org_id: OrgId, *, audit: AuditEntry) -> bool:
        had_key = self._destroy(org_id)
        await self.append_audit(audit)
        return had_key

    async def append_audit(self, entry: AuditEntry) -> None:
        self.audit.append(
            AuditRecord(
                id=len(self.audit) + 1,
                org_id=entry.org_id,
                actor=entry.actor,
                action=str(entry.action),
                target=entry.target,
                allowed=entry.allowed,
                at=entry.at,
                detail=entry.detail,
            )
        )

    async def list_audit(
        self, org_id: OrgId, *, limit: int, before_id: int | None = None
    ) -> list[AuditRecord]:
        found = [
            r
            for r in reversed(self.audit)
            if r.org_id == org_id and (before_id is None or r.id < before_id)
        ]
        return found[:limit]
