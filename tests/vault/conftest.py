"""Fixtures: the vault over every backend (in memory, SQLite, PostgreSQL when configured).

PostgreSQL runs when ``CORRAL_TEST_POSTGRES_URL`` is set; each test starts from the
database as the migrations left it (:func:`tests.conftest.reset_postgres`), so tests are
isolated from each other and from other modules.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import nkeys
import pytest
from sqlalchemy import delete, select, update

from corral.domain.agent_auth import AgentIdentity, RegisteredAgent
from corral.domain.ids import AgentId, OrgId
from corral.store.db import Database, sqlite_url
from corral.store.schema import DataKeyRow, OrgRow, SecretRow
from corral.store.vault_repo import SqlVaultStore
from corral.vault.keys import Keyring
from corral.vault.memory import InMemoryVaultStore
from corral.vault.service import Vault
from corral.vault.storage import VaultStore
from tests.conftest import migrated_sqlite, reset_postgres

ORG_A = OrgId("org_aaaaaaaaaa")
ORG_B = OrgId("org_bbbbbbbbbb")
SLUGS = {ORG_A: "acme-corp", ORG_B: "globex"}
POSTGRES_URL = os.environ.get("CORRAL_TEST_POSTGRES_URL")
SECRET_VALUE = b"s3cr3t-VALUE-do-not-leak-7f3a9c"


@dataclass
class Backend:
    """A store plus the raw access a test needs to play an attacker with database access."""

    name: str
    store: VaultStore
    db: Database | None
    memory: InMemoryVaultStore | None

    async def move_secret(self, org: OrgId, name: str, *, to_org: OrgId, to_name: str) -> None:
        """Copy the stored row of ``org/name`` over ``to_org/to_name`` (which must exist)."""
        if self.memory is not None:
            src = self.memory.secrets[(org, name)]
            dst = self.memory.secrets[(to_org, to_name)]
            self.memory.secrets[(to_org, to_name)] = type(src)(
                to_org, to_name, src.version, src.ciphertext, dst.created_at, dst.updated_at
            )
            return
        assert self.db is not None
        async with self.db.sessions() as s, s.begin():
            row = await s.get(SecretRow, (org, name))
            assert row is not None
            await s.execute(
                update(SecretRow)
                .where(SecretRow.org_id == to_org, SecretRow.name == to_name)
                .values(ciphertext=row.ciphertext, version=row.version)
            )

    async def set_secret_version(self, org: OrgId, name: str, version: int) -> None:
        if self.memory is not None:
            src = self.memory.secrets[(org, name)]
            self.memory.secrets[(org, name)] = type(src)(
                org, name, version, src.ciphertext, src.created_at, src.updated_at
            )
            return
        assert self.db is not None
        async with self.db.sessions() as s, s.begin():
            await s.execute(
                update(SecretRow)
                .where(SecretRow.org_id == org, SecretRow.name == name)
                .values(version=version)
            )

    async def raw_ciphertexts(self) -> dict[tuple[str, str], bytes]:
        if self.memory is not None:
            return {k: r.ciphertext for k, r in self.memory.secrets.items()}
        assert self.db is not None
        async with self.db.sessions() as s:
            result = await s.execute(select(SecretRow.org_id, SecretRow.name, SecretRow.ciphertext))
            return {(r.org_id, r.name): bytes(r.ciphertext) for r in result}

    async def delete_org_row(self, org: OrgId) -> None:
        """Delete the organization itself (the FK cascades to its vault rows)."""
        if self.memory is not None:
            self.memory.remove_org(org)
            return
        assert self.db is not None
        async with self.db.sessions() as s, s.begin():
            await s.execute(delete(OrgRow).where(OrgRow.id == org))

    async def swap_data_keys(self, a: OrgId, b: OrgId) -> None:
        """Give org ``a`` the wrapped data key of org ``b``."""
        if self.memory is not None:
            src = self.memory.data_keys[b]
            self.memory.data_keys[a] = type(src)(
                a, src.wrapped_key, src.master_key_id, src.created_at
            )
            return
        assert self.db is not None
        async with self.db.sessions() as s, s.begin():
            row = await s.get(DataKeyRow, b)
            assert row is not None
            await s.execute(
                update(DataKeyRow)
                .where(DataKeyRow.org_id == a)
                .values(wrapped_key=row.wrapped_key, master_key_id=row.master_key_id)
            )


async def _insert_orgs(db: Database) -> None:
    async with db.sessions() as s, s.begin():
        for org_id, slug in SLUGS.items():
            s.add(OrgRow(id=org_id, slug=slug, plan="standard", created_at=datetime.now(UTC)))


@pytest.fixture
async def sqlite_db(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    await migrated_sqlite(tmp_path / "corral.db", tmp_path_factory.getbasetemp())
    db = Database(sqlite_url(tmp_path / "corral.db"))
    await db.start()
    await _insert_orgs(db)
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
async def postgres_db() -> AsyncIterator[Database]:
    if not POSTGRES_URL:
        pytest.skip("CORRAL_TEST_POSTGRES_URL is not set: PostgreSQL backend not tested here")
    await reset_postgres(POSTGRES_URL)
    db = Database(POSTGRES_URL)
    try:
        await db.start()
        await _insert_orgs(db)
        yield db
    finally:
        await db.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> Database:
    """A migrated database with organizations ORG_A and ORG_B, on each SQL backend."""
    fixture = "sqlite_db" if request.param == "sqlite" else "postgres_db"
    database: Database = request.getfixturevalue(fixture)
    return database


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        memory = InMemoryVaultStore(orgs=SLUGS)
        return Backend("memory", memory, None, memory)
    fixture = "sqlite_db" if request.param == "sqlite" else "postgres_db"
    database: Database = request.getfixturevalue(fixture)
    return Backend(request.param, SqlVaultStore(database), database, None)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def keyring(data_dir: Path) -> Keyring:
    return Keyring.open(data_dir, environ={})


@pytest.fixture
async def vault(backend: Backend, keyring: Keyring) -> Vault:
    v = Vault(backend.store, keyring)
    await v.start()
    return v


@dataclass
class TestAgent:
    """An agent with its own NATS user nkey, as the platform records it."""

    __test__ = False

    identity: AgentIdentity
    seed: bytes
    public_key: str

    @property
    def registered(self) -> RegisteredAgent:
        return RegisteredAgent(self.identity, self.public_key)


def make_agent(org: OrgId, name: str, role: str = "worker") -> TestAgent:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    keys = nkeys.from_seed(seed)
    public_key = keys.public_key.decode()
    keys.wipe()
    identity = AgentIdentity(AgentId(f"agent-{SLUGS[org]}-{name}-0001"), role, org)
    return TestAgent(identity, bytes(seed), public_key)


def directory(
    *agents: TestAgent,
) -> Callable[[OrgId, AgentId], Awaitable[RegisteredAgent | None]]:
    """A lookup callback over the given agents, scoped by org as the platform's is."""
    by_key = {(a.identity.org_id, a.identity.agent_id): a.registered for a in agents}

    async def lookup(org_id: OrgId, agent_id: AgentId) -> RegisteredAgent | None:
        return by_key.get((org_id, agent_id))

    return lookup
