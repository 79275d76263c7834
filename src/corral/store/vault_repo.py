"""The vault's persistence over SQLAlchemy: data keys, secrets, grants and audit.

Implements ``corral.vault.storage.VaultStore`` structurally (this package does not import the
vault). Only ciphertext and wrapped keys reach these tables. Every change is written in one
transaction with the audit record that describes it; versions and re-wraps are conditional
``UPDATE``s, so concurrent writers on SQLite and PostgreSQL never lose an update.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Result, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Delete, Insert, Update

from corral.domain.errors import NotFound, Unavailable
from corral.domain.grants import SecretGrant
from corral.domain.ids import OrgId
from corral.domain.secrets import (
    AuditEntry,
    AuditRecord,
    DataKeyRecord,
    GrantRecord,
    SecretInfo,
    SecretRecord,
)
from corral.store.db import Database
from corral.store.schema import AuditRow, DataKeyRow, GrantRow, SecretRow

__all__ = ["SqlVaultStore"]


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _audit_row(entry: AuditEntry) -> AuditRow:
    return AuditRow(
        org_id=entry.org_id,
        actor=entry.actor,
        action=str(entry.action),
        target=entry.target,
        allowed=entry.allowed,
        at=entry.at,
        detail=entry.detail,
    )


def _data_key(row: DataKeyRow) -> DataKeyRecord:
    return DataKeyRecord(
        org_id=OrgId(row.org_id),
        wrapped_key=bytes(row.wrapped_key),
        master_key_id=row.master_key_id,
        created_at=_utc(row.created_at),
    )


def _secret(row: SecretRow) -> SecretRecord:
    return SecretRecord(
        org_id=OrgId(row.org_id),
        name=row.name,
        version=row.version,
        ciphertext=bytes(row.ciphertext),
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
    )


def _grant(row: GrantRow) -> GrantRecord:
    return GrantRecord(
        id=row.id,
        org_id=OrgId(row.org_id),
        grant=SecretGrant(pattern=row.pattern, role=row.role, agent=row.agent_id),
        created_at=_utc(row.created_at),
    )


def _rowcount(result: Result[Any]) -> int:
    return cast("CursorResult[Any]", result).rowcount


def _org_missing(org_id: str) -> NotFound:
    return NotFound(f"organization {org_id} not found", details={"org_id": org_id})


class SqlVaultStore:
    """``VaultStore`` on a :class:`Database` (SQLite WAL or PostgreSQL)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @asynccontextmanager
    async def _tx(self, what: str, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A transaction; ``write``: one that writes (queued with the others on SQLite)."""
        try:
            if write:
                async with self._db.writing() as s:
                    yield s
                return
            async with self._db.sessions() as s, s.begin():
                yield s
        except IntegrityError:
            raise  # the caller knows which constraint it means
        except (SQLAlchemyError, OSError) as exc:
            # Not str(exc): SQLAlchemy appends the statement's parameters to it.
            cause = getattr(exc, "orig", None) or exc
            raise Unavailable(
                f"vault store unavailable while {what}: {type(cause).__name__}: "
                f"{str(cause).splitlines()[0] if str(cause) else ''}"
            ) from exc

    def _insert_ignoring_conflict(self, table: type[DataKeyRow] | type[SecretRow]) -> Insert:
        if self._db.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    # -- data keys ----------------------------------------------------------------------------

    async def get_data_key(self, org_id: OrgId) -> DataKeyRecord | None:
        async with self._tx("reading a data key") as s:
            row = await s.get(DataKeyRow, org_id)
            return None if row is None else _data_key(row)

    async def create_data_key(self, record: DataKeyRecord, *, audit: AuditEntry) -> DataKeyRecord:
        try:
            async with self._tx("creating a data key", write=True) as s:
                result = await s.execute(
                    self._insert_ignoring_conflict(DataKeyRow).values(
                        org_id=record.org_id,
                        wrapped_key=record.wrapped_key,
                        master_key_id=record.master_key_id,
                        created_at=record.created_at,
                    )
                )
                if _rowcount(result) == 1:
                    s.add(_audit_row(audit))
                    return record
        except IntegrityError as exc:
            raise _org_missing(record.org_id) from exc
        stored = await self.get_data_key(record.org_id)
        if stored is None:  # inserted by someone else and already destroyed
            raise NotFound(f"organization {record.org_id} has no data key")
        return stored

    async def list_data_keys(self) -> list[DataKeyRecord]:
        async with self._tx("listing data keys") as s:
            rows = await s.scalars(select(DataKeyRow).order_by(DataKeyRow.org_id))
            return [_data_key(r) for r in rows]

    async def replace_data_key(
        self, record: DataKeyRecord, *, expected_master_key_id: str, audit: AuditEntry
    ) -> bool:
        async with self._tx("re-wrapping a data key", write=True) as s:
            result = await s.execute(
                update(DataKeyRow)
                .where(
                    DataKeyRow.org_id == record.org_id,
                    DataKeyRow.master_key_id == expected_master_key_id,
                )
                .values(wrapped_key=record.wrapped_key, master_key_id=record.master_key_id)
            )
            if _rowcount(result) != 1:
                return False
            s.add(_audit_row(audit))
            return True

    # -- secrets ------------------------------------------------------------------------------

    async def get_secret(self, org_id: OrgId, name: str) -> SecretRecord | None:
        async with self._tx("reading a secret") as s:
            row = await s.get(SecretRow, (org_id, name))
            return None if row is None else _secret(row)

    async def get_secret_info(self, org_id: OrgId, name: str) -> SecretInfo | None:
        async with self._tx("reading a secret") as s:
            found = (
                await s.execute(
                    select(
                        SecretRow.name,
                        SecretRow.version,
                        SecretRow.created_at,
                        SecretRow.updated_at,
                    ).where(SecretRow.org_id == org_id, SecretRow.name == name)
                )
            ).first()
            if found is None:
                return None
            return SecretInfo(
                found.name, found.version, _utc(found.created_at), _utc(found.updated_at)
            )

    async def list_secrets(self, org_id: OrgId) -> list[SecretInfo]:
        async with self._tx("listing secrets") as s:
            rows = await s.execute(
                select(
                    SecretRow.name, SecretRow.version, SecretRow.created_at, SecretRow.updated_at
                )
                .where(SecretRow.org_id == org_id)
                .order_by(SecretRow.name)
            )
            return [
                SecretInfo(r.name, r.version, _utc(r.created_at), _utc(r.updated_at)) for r in rows
            ]

    async def write_secret(
        self, record: SecretRecord, *, expected_version: int, audit: AuditEntry
    ) -> bool:
        try:
            async with self._tx("writing a secret", write=True) as s:
                statement: Insert | Update
                if expected_version == 0:
                    statement = self._insert_ignoring_conflict(SecretRow).values(
                        org_id=record.org_id,
                        name=record.name,
                        version=record.version,
                        ciphertext=record.ciphertext,
                        created_at=record.created_at,
                        updated_at=record.updated_at,
                    )
                else:
                    statement = (
                        update(SecretRow)
                        .where(
                            SecretRow.org_id == record.org_id,
                            SecretRow.name == record.name,
                            SecretRow.version == expected_version,
                        )
                        .values(
                            version=record.version,
                            ciphertext=record.ciphertext,
                            updated_at=record.updated_at,
                        )
                    )
                result = await s.execute(statement)
                if _rowcount(result) != 1:
                    return False
                s.add(_audit_row(audit))
                return True
        except IntegrityError as exc:
            raise _org_missing(record.org_id) from exc

    async def _delete_audited(self, what: str, statement: Delete, audit: AuditEntry) -> bool:
        """Delete one row and record ``audit`` in the same transaction; False if no row."""
        async with self._tx(what, write=True) as s:
            if _rowcount(await s.execute(statement)) != 1:
                return False
            s.add(_audit_row(audit))
            return True

    async def delete_secret(self, org_id: OrgId, name: str, *, audit: AuditEntry) -> bool:
        statement = delete(SecretRow).where(SecretRow.org_id == org_id, SecretRow.name == name)
        return await self._delete_audited("deleting a secret", statement, audit)

    # -- grants -------------------------------------------------------------------------------

    async def add_grant(self, record: GrantRecord, *, audit: AuditEntry) -> None:
        try:
            async with self._tx("adding a grant", write=True) as s:
                await s.execute(
                    insert(GrantRow).values(
                        id=record.id,
                        org_id=record.org_id,
                        pattern=record.grant.pattern,
                        role=record.grant.role,
                        agent_id=record.grant.agent,
                        created_at=record.created_at,
                    )
                )
                s.add(_audit_row(audit))
        except IntegrityError as exc:
            raise _org_missing(record.org_id) from exc

    async def list_grants(self, org_id: OrgId) -> list[GrantRecord]:
        async with self._tx("listing grants") as s:
            rows = await s.scalars(
                select(GrantRow)
                .where(GrantRow.org_id == org_id)
                .order_by(GrantRow.created_at, GrantRow.id)
            )
            return [_grant(r) for r in rows]

    async def remove_grant(self, org_id: OrgId, grant_id: str, *, audit: AuditEntry) -> bool:
        statement = delete(GrantRow).where(GrantRow.org_id == org_id, GrantRow.id == grant_id)
        return await self._delete_audited("removing a grant", statement, audit)

    # -- organizations ------------------------------------------------------------------------

    async def destroy_org(self, org_id: OrgId, *, audit: AuditEntry) -> bool:
        async with self._tx("destroying an organization's vault", write=True) as s:
            await s.execute(delete(SecretRow).where(SecretRow.org_id == org_id))
            await s.execute(delete(GrantRow).where(GrantRow.org_id == org_id))
            result = await s.execute(delete(DataKeyRow).where(DataKeyRow.org_id == org_id))
            s.add(_audit_row(audit))
            return _rowcount(result) == 1

    # -- audit --------------------------------------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> None:
        async with self._tx("writing the audit log", write=True) as s:
            s.add(_audit_row(entry))

    async def list_audit(
        self, org_id: OrgId, *, limit: int, before_id: int | None = None
    ) -> list[AuditRecord]:
        query = select(AuditRow).where(AuditRow.org_id == org_id)
        if before_id is not None:
            query = query.where(AuditRow.id < before_id)
        async with self._tx("reading the audit log") as s:
            rows = await s.scalars(query.order_by(AuditRow.id.desc()).limit(limit))
            return [
                AuditRecord(
                    id=r.id,
                    org_id=OrgId(r.org_id),
                    actor=r.actor,
                    action=r.action,
                    target=r.target,
                    allowed=r.allowed,
                    at=_utc(r.at),
                    detail=r.detail,
                )
                for r in rows
            ]
