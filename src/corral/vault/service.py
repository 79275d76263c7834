"""The vault service: per-organization encrypted secrets, read by agents only under a grant.

Values are write-only from the outside: the API can put, list (names and versions) and
delete; only an authenticated agent of the same org, covered by a grant, gets a value back,
and every such read or denial is audited. Each secret is sealed under its org's data key with
the org id, name and version as associated data, so ciphertext moved to another org or name
in the database fails loudly instead of decrypting.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NoReturn

from corral.domain.agent_auth import AgentIdentity
from corral.domain.errors import Conflict, InvalidInput, NotFound, PermissionDenied, Unavailable
from corral.domain.ids import OrgId
from corral.domain.secrets import (
    MAX_SECRET_BYTES,
    AuditAction,
    DataKeyRecord,
    SecretInfo,
    SecretRecord,
    validate_secret_name,
    validate_secret_value,
)
from corral.vault import crypto
from corral.vault.audit import AuditLog
from corral.vault.grants import Grants, covering_grant, describe
from corral.vault.keys import Keyring, MasterKey
from corral.vault.storage import VaultStore

__all__ = ["SYSTEM_ACTOR", "Vault"]

SYSTEM_ACTOR = "system:vault"
_WRITE_ATTEMPTS = 5
_REWRAP_PASSES = 10


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Vault:
    """Secrets, grants and audit of every organization, over one store and one keyring.

    Call :meth:`start` before use: it refuses a wrong master key and finishes an interrupted
    master key rotation.
    """

    def __init__(
        self,
        store: VaultStore,
        keyring: Keyring,
        *,
        clock: Callable[[], datetime] = _utcnow,
        max_value_bytes: int = MAX_SECRET_BYTES,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self._clock = clock
        self._max_value_bytes = max_value_bytes
        self._rotation = asyncio.Lock()
        self.audit = AuditLog(store, clock=clock)
        self.grants = Grants(store, self.audit, clock=clock)

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    # -- master key ---------------------------------------------------------------------------

    async def start(self, *, actor: str = SYSTEM_ACTOR) -> None:
        """Prove the master key against every stored data key; re-wrap those still under a
        retired key (an interrupted rotation) and install the new key file.

        Raises:
            Unavailable: wrong master key — a data key is wrapped under a key this process
                does not hold, or does not unwrap.
        """
        async with self._rotation:
            await self._rewrap_all(actor)
            self._keyring.finish_rotation()

    async def rotate_master_key(self, *, actor: str, new_key: MasterKey | None = None) -> MasterKey:
        """Replace the master key: every data key is re-wrapped, no secret is re-encrypted.

        With a key file, the new key replaces it (crash-safe, see ``corral.vault.keys``);
        with ``CORRAL_MASTER_KEY``, the caller must put the returned key there. Other
        processes sharing the store must be restarted with the new key.

        Returns:
            The new master key.
        """
        new = new_key or MasterKey.generate()
        async with self._rotation:
            self._keyring.begin_rotation(new)
            await self._rewrap_all(actor)
            self._keyring.finish_rotation()
        return new

    async def _rewrap_all(self, actor: str) -> None:
        for record in await self._store.list_data_keys():
            if record.master_key_id == self._keyring.current_id:
                self._keyring.unwrap(record)  # proves the key; raises "wrong master key"
            else:
                await self._rewrap(record, actor)
        # Data keys created under the old key while the first pass ran.
        for _ in range(_REWRAP_PASSES):
            stale = [
                r
                for r in await self._store.list_data_keys()
                if r.master_key_id != self._keyring.current_id
            ]
            if not stale:
                return
            for record in stale:
                await self._rewrap(record, actor)
        raise Unavailable("master key rotation did not settle: data keys keep changing")

    async def _rewrap(self, record: DataKeyRecord, actor: str) -> DataKeyRecord | None:
        while record.master_key_id != self._keyring.current_id:
            new = self._keyring.rewrap(record)
            audit = self.audit.entry(
                record.org_id,
                actor=actor,
                action=AuditAction.KEY_REWRAP,
                target="data-key",
                allowed=True,
                detail=f"re-wrapped from master key {record.master_key_id} to {new.master_key_id}",
            )
            if await self._store.replace_data_key(
                new, expected_master_key_id=record.master_key_id, audit=audit
            ):
                return new
            again = await self._store.get_data_key(record.org_id)
            if again is None:
                return None  # destroyed meanwhile
            record = again
        return record

    async def _data_key(self, org_id: OrgId, *, create: bool, actor: str) -> bytes | None:
        record = await self._store.get_data_key(org_id)
        if record is None:
            if not create:
                return None
            _, fresh = self._keyring.new_data_key(org_id, now=self._clock())
            record = await self._store.create_data_key(
                fresh,
                audit=self.audit.entry(
                    org_id,
                    actor=actor,
                    action=AuditAction.KEY_CREATE,
                    target="data-key",
                    allowed=True,
                    detail=f"wrapped under master key {fresh.master_key_id}",
                ),
            )
        if record.master_key_id != self._keyring.current_id and self._keyring.holds(
            record.master_key_id
        ):
            record = await self._rewrap(record, actor) or record
        return self._keyring.unwrap(record)

    # -- secrets ------------------------------------------------------------------------------

    async def put(self, org_id: OrgId, name: str, value: bytes, *, actor: str) -> SecretInfo:
        """Store a new version of secret ``name`` (version 1 when new).

        Raises:
            InvalidInput: bad name, or the value is not bytes or larger than the limit.
            NotFound: the organization does not exist.
            Conflict: concurrent writers kept winning.
        """
        name = validate_secret_name(name)
        data = validate_secret_value(value, max_bytes=self._max_value_bytes)
        data_key = await self._data_key(org_id, create=True, actor=actor)
        assert data_key is not None
        for _ in range(_WRITE_ATTEMPTS):
            current = await self._store.get_secret_info(org_id, name)
            version = 1 if current is None else current.version + 1
            now = self._clock()
            record = SecretRecord(
                org_id=org_id,
                name=name,
                version=version,
                ciphertext=crypto.seal(data_key, data, crypto.secret_aad(org_id, name, version)),
                created_at=now if current is None else current.created_at,
                updated_at=now,
            )
            audit = self.audit.entry(
                org_id,
                actor=actor,
                action=AuditAction.SECRET_PUT,
                target=name,
                allowed=True,
                detail=f"version {version} ({len(data)} bytes)",
            )
            expected = 0 if current is None else current.version
            if await self._store.write_secret(record, expected_version=expected, audit=audit):
                return record.info
        raise Conflict(
            f"secret {name!r} was changed concurrently; try again", details={"name": name}
        )

    async def info(self, org_id: OrgId, name: str) -> SecretInfo:
        """Name, version and times of one secret — never its value.

        Raises:
            NotFound: no such secret in this org.
        """
        found = await self._store.get_secret_info(org_id, validate_secret_name(name))
        if found is None:
            raise NotFound(f"secret {name!r} not found", details={"name": name})
        return found

    async def list(self, org_id: OrgId) -> builtins.list[SecretInfo]:
        """The org's secrets by name, with versions and times; never values."""
        return await self._store.list_secrets(org_id)

    async def delete(self, org_id: OrgId, name: str, *, actor: str) -> None:
        """Delete secret ``name`` with all its versions.

        Raises:
            NotFound: no such secret in this org.
        """
        name = validate_secret_name(name)
        audit = self.audit.entry(
            org_id, actor=actor, action=AuditAction.SECRET_DELETE, target=name, allowed=True
        )
        if not await self._store.delete_secret(org_id, name, audit=audit):
            raise NotFound(f"secret {name!r} not found", details={"name": name})

    async def destroy_org(self, org_id: OrgId, *, actor: str) -> None:
        """Crypto-shred the org: destroy its data key with its secrets and grants. The audit
        log stays. Call it before deleting the organization (deleting the organization row
        also cascades, but unaudited)."""
        await self._store.destroy_org(
            org_id,
            audit=self.audit.entry(
                org_id,
                actor=actor,
                action=AuditAction.KEY_DESTROY,
                target="data-key",
                allowed=True,
                detail="data key destroyed with every secret and grant",
            ),
        )

    # -- agent reads --------------------------------------------------------------------------

    async def read_for_agent(self, org_id: OrgId, agent: AgentIdentity, name: str) -> bytes:
        """The value of ``name`` for an authenticated agent, if a grant of ``org_id`` covers
        it and the agent belongs to ``org_id``. Audited whatever the outcome.

        ``agent`` must come from the platform's records (see ``corral.vault.access``), never
        from what a request claims.

        Raises:
            PermissionDenied: the agent is of another org, or no grant covers the name.
            NotFound: granted, but no such secret.
            Unavailable: the ciphertext or data key does not decrypt (moved, altered,
                destroyed).
        """
        actor = f"agent:{agent.agent_id}"

        async def deny(reason: str) -> NoReturn:
            await self.audit.record(
                org_id,
                actor=actor,
                action=AuditAction.SECRET_READ,
                target=name if isinstance(name, str) else repr(name),
                allowed=False,
                detail=f"denied: {reason}",
            )
            raise PermissionDenied(
                f"agent {agent.agent_id} may not read secret {name!r}: {reason}",
                details={"secret": name, "reason": reason},
            )

        try:
            validate_secret_name(name)
        except InvalidInput:
            await deny("invalid secret name")
        if agent.org_id != org_id:
            await deny("the agent belongs to another organization")
        grant = covering_grant(await self._store.list_grants(org_id), agent, name)
        if grant is None:
            await deny("no grant covers this secret")
        return await self._open(
            org_id, name, actor=actor, context=f"via {grant.id} ({describe(grant.grant)})"
        )

    # -- platform reads -----------------------------------------------------------------------

    async def read_for_platform(self, org_id: OrgId, name: str, *, actor: str, why: str) -> bytes:
        """The value of ``name`` for the control plane itself (the model gateway's provider
        key), never for an agent; audited with ``why``.

        Raises:
            NotFound: no such secret in this org.
            Unavailable: the ciphertext or data key does not decrypt.
        """
        return await self._open(org_id, validate_secret_name(name), actor=actor, context=why)

    async def _open(self, org_id: OrgId, name: str, *, actor: str, context: str) -> bytes:
        """The value of ``name``, for a reader already allowed to have it; audited whatever
        the outcome, with ``context`` (the grant, or why the platform reads it).

        Raises:
            NotFound: no such secret in this org.
            Unavailable: the ciphertext or data key does not decrypt (moved, altered,
                destroyed).
        """

        async def audit(allowed: bool, detail: str) -> None:
            await self.audit.record(
                org_id,
                actor=actor,
                action=AuditAction.SECRET_READ,
                target=name,
                allowed=allowed,
                detail=f"{detail} ({context})",
            )

        record = await self._store.get_secret(org_id, name)
        if record is None:
            await audit(False, "not found")
            raise NotFound(f"secret {name!r} not found", details={"name": name})
        try:
            data_key = await self._data_key(org_id, create=False, actor=actor)
            if data_key is None:
                raise Unavailable(
                    f"organization {org_id} has no data key: its secrets were destroyed",
                    details={"name": name},
                )
            value = crypto.open_sealed(
                data_key,
                record.ciphertext,
                crypto.secret_aad(org_id, name, record.version),
                what=f"secret {name!r} (version {record.version}) of organization {org_id}",
            )
        except Unavailable as exc:
            await audit(False, f"failed: {exc.message}")
            raise
        await audit(True, f"version {record.version}")
        return value
