"""The vault's persistence seam: what it needs from a store, and nothing about tables.

``corral.store.vault_repo.SqlVaultStore`` implements it over SQLAlchemy;
``corral.vault.memory.InMemoryVaultStore`` is the fake for tests of the layers above. The
store only ever sees ciphertext and wrapped keys. Every change takes the audit entry that
records it and writes both in one transaction: there is no change without its record.
"""

from __future__ import annotations

from typing import Protocol

from corral.domain.ids import OrgId
from corral.domain.secrets import (
    AuditEntry,
    AuditRecord,
    DataKeyRecord,
    GrantRecord,
    SecretInfo,
    SecretRecord,
)

__all__ = ["VaultStore"]


class VaultStore(Protocol):
    """Persistence for data keys, secrets, grants and the audit log, always scoped by org.

    Implementations translate their own failures into ``Unavailable`` and a missing
    organization into ``NotFound``.
    """

    async def get_data_key(self, org_id: OrgId) -> DataKeyRecord | None: ...

    async def create_data_key(self, record: DataKeyRecord, *, audit: AuditEntry) -> DataKeyRecord:
        """Insert the org's data key unless it has one; return the one that is stored.

        Raises:
            NotFound: the organization does not exist.
        """
        ...

    async def list_data_keys(self) -> list[DataKeyRecord]: ...

    async def replace_data_key(
        self, record: DataKeyRecord, *, expected_master_key_id: str, audit: AuditEntry
    ) -> bool:
        """Store a re-wrapped data key if the stored one is still under the expected master
        key; False when it is not (changed meanwhile, or gone)."""
        ...

    async def get_secret(self, org_id: OrgId, name: str) -> SecretRecord | None: ...

    async def get_secret_info(self, org_id: OrgId, name: str) -> SecretInfo | None: ...

    async def list_secrets(self, org_id: OrgId) -> list[SecretInfo]:
        """Every secret of the org by name, without ciphertext."""
        ...

    async def write_secret(
        self, record: SecretRecord, *, expected_version: int, audit: AuditEntry
    ) -> bool:
        """Insert (``expected_version == 0``) or replace the secret if its stored version is
        still ``expected_version``; False when another writer got there first.

        Raises:
            NotFound: the organization does not exist.
        """
        ...

    async def delete_secret(self, org_id: OrgId, name: str, *, audit: AuditEntry) -> bool: ...

    async def add_grant(self, record: GrantRecord, *, audit: AuditEntry) -> None:
        """Store a grant.

        Raises:
            NotFound: the organization does not exist.
        """
        ...

    async def list_grants(self, org_id: OrgId) -> list[GrantRecord]: ...

    async def remove_grant(self, org_id: OrgId, grant_id: str, *, audit: AuditEntry) -> bool: ...

    async def destroy_org(self, org_id: OrgId, *, audit: AuditEntry) -> bool:
        """Delete the org's data key, secrets and grants (its audit stays); True if it had a
        data key."""
        ...

    async def append_audit(self, entry: AuditEntry) -> None: ...

    async def list_audit(
        self, org_id: OrgId, *, limit: int, before_id: int | None = None
    ) -> list[AuditRecord]:
        """The org's records, newest first, with ids below ``before_id`` when given."""
        ...
