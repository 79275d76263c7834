"""The master key: its file, refusing a wrong or exposed key, and rotation."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from corral.domain.errors import InvalidInput, Unavailable
from corral.domain.grants import SecretGrant
from corral.domain.secrets import AuditAction
from corral.vault import crypto
from corral.vault.keys import MASTER_KEY_ENV, PREVIOUS_MASTER_KEYS_ENV, Keyring, MasterKey
from corral.vault.service import Vault
from tests.vault.conftest import ORG_A, ORG_B, SECRET_VALUE, Backend, make_agent

ADMIN = "admin"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_master_key_file_is_created_0600_whatever_the_umask(data_dir: Path) -> None:
    old = os.umask(0)
    try:
        keyring = Keyring.open(data_dir, environ={})
    finally:
        os.umask(old)
    key_file = data_dir / "master.key"
    assert _mode(key_file) == 0o600
    assert MasterKey.from_text(key_file.read_text()).key_id == keyring.current_id
    assert [p.name for p in data_dir.iterdir()] == ["master.key"]  # no temp file left


def test_the_same_key_is_loaded_on_the_next_start(data_dir: Path) -> None:
    first = Keyring.open(data_dir, environ={})
    assert Keyring.open(data_dir, environ={}).current_id == first.current_id


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_a_key_file_readable_by_others_refuses_to_start(data_dir: Path, mode: int) -> None:
    Keyring.open(data_dir, environ={})
    (data_dir / "master.key").chmod(mode)
    with pytest.raises(Unavailable, match="chmod 600") as caught:
        Keyring.open(data_dir, environ={})
    assert f"{mode:04o}" in str(caught.value)


def test_a_stricter_key_file_is_fine(data_dir: Path) -> None:
    first = Keyring.open(data_dir, environ={})
    (data_dir / "master.key").chmod(0o400)
    assert Keyring.open(data_dir, environ={}).current_id == first.current_id


def test_a_malformed_key_file_is_refused_without_echoing_it(data_dir: Path) -> None:
    data_dir.mkdir()
    key_file = data_dir / "master.key"
    key_file.write_text("c2hvcnQ\n")
    key_file.chmod(0o600)
    with pytest.raises(InvalidInput, match="32 bytes") as caught:
        Keyring.open(data_dir, environ={})
    assert "c2hvcnQ" not in str(caught.value)


def test_the_environment_key_wins_and_no_file_is_written(data_dir: Path) -> None:
    key = MasterKey.generate()
    keyring = Keyring.open(data_dir, environ={MASTER_KEY_ENV: key.to_text()})
    assert keyring.current_id == key.key_id
    assert not (data_dir / "master.key").exists()


def test_a_malformed_environment_key_is_refused(data_dir: Path) -> None:
    with pytest.raises(InvalidInput, match=MASTER_KEY_ENV):
        Keyring.open(data_dir, environ={MASTER_KEY_ENV: "not base64url!"})


def test_key_material_never_shows_in_reprs() -> None:
    key = MasterKey.generate()
    keyring = Keyring(key)
    for text in (repr(key), str(key), repr(keyring)):
        assert key.to_text() not in text
        assert key.material.hex() not in text
    assert key.key_id in str(key)


async def test_a_wrong_master_key_fails_loudly_at_start(backend: Backend, keyring: Keyring) -> None:
    vault = Vault(backend.store, keyring)
    await vault.start()
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    with pytest.raises(Unavailable, match="wrong master key") as caught:
        await Vault(backend.store, Keyring(MasterKey.generate())).start()
    assert keyring.current_id in str(caught.value)


async def test_a_lost_key_file_is_replaced_but_the_start_is_refused(
    backend: Backend, data_dir: Path
) -> None:
    vault = Vault(backend.store, Keyring.open(data_dir, environ={}))
    await vault.start()
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    (data_dir / "master.key").unlink()
    with pytest.raises(Unavailable, match="wrong master key"):
        await Vault(backend.store, Keyring.open(data_dir, environ={})).start()


async def test_a_data_key_that_does_not_unwrap_under_its_key_id_refuses_to_start(
    backend: Backend, keyring: Keyring
) -> None:
    vault = Vault(backend.store, keyring)
    await vault.start()
    await vault.put(ORG_A, "github-token", b"a", actor=ADMIN)
    await vault.put(ORG_B, "github-token", b"b", actor=ADMIN)
    await backend.swap_data_keys(ORG_A, ORG_B)
    with pytest.raises(Unavailable, match="wrong master key or corrupted data key"):
        await Vault(backend.store, keyring).start()


async def test_any_key_starts_an_empty_vault(backend: Backend) -> None:
    await Vault(backend.store, Keyring(MasterKey.generate())).start()


async def test_rotation_rewraps_data_keys_and_leaves_ciphertexts_alone(
    backend: Backend, data_dir: Path
) -> None:
    keyring = Keyring.open(data_dir, environ={})
    old = MasterKey.from_text((data_dir / "master.key").read_text())
    old_id = keyring.current_id
    vault = Vault(backend.store, keyring)
    await vault.start()
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    await vault.put(ORG_B, "slack-webhook", b"b-value", actor=ADMIN)
    before_keys = {r.org_id: r for r in await backend.store.list_data_keys()}
    before_ciphertexts = await backend.raw_ciphertexts()

    new = await vault.rotate_master_key(actor=ADMIN)

    assert new.key_id != old_id and keyring.current_id == new.key_id
    after_keys = {r.org_id: r for r in await backend.store.list_data_keys()}
    assert set(after_keys) == {ORG_A, ORG_B}
    for org, record in after_keys.items():
        assert record.master_key_id == new.key_id
        assert record.wrapped_key != before_keys[org].wrapped_key
        assert record.created_at == before_keys[org].created_at
    assert await backend.raw_ciphertexts() == before_ciphertexts
    assert MasterKey.from_text((data_dir / "master.key").read_text()).key_id == new.key_id
    assert _mode(data_dir / "master.key") == 0o600
    assert not (data_dir / "master.key.next").exists()

    restarted = Vault(backend.store, Keyring.open(data_dir, environ={}))
    await restarted.start()
    reader = make_agent(ORG_A, "reader")
    await restarted.grants.add(ORG_A, SecretGrant("*", role="worker"), actor=ADMIN)
    assert await restarted.read_for_agent(ORG_A, reader.identity, "github-token") == SECRET_VALUE
    with pytest.raises(Unavailable, match="wrong master key"):
        await Vault(backend.store, Keyring(old)).start()  # the old key opens nothing now
    assert [r.action for r in await restarted.audit.list(ORG_B)][:1] == ["key.rewrap"]


async def test_an_interrupted_rotation_is_finished_at_the_next_start(
    backend: Backend, data_dir: Path
) -> None:
    keyring = Keyring.open(data_dir, environ={})
    vault = Vault(backend.store, keyring)
    await vault.start()
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    await vault.put(ORG_B, "slack-webhook", b"b", actor=ADMIN)
    # Crash after the new key file was written and one data key re-wrapped.
    new = MasterKey.generate()
    keyring.begin_rotation(new)
    first = (await backend.store.list_data_keys())[0]
    rewrapped = keyring.rewrap(first)
    entry = vault.audit.entry(
        first.org_id, actor=ADMIN, action=AuditAction.KEY_REWRAP, target="data-key", allowed=True
    )
    assert await backend.store.replace_data_key(
        rewrapped, expected_master_key_id=first.master_key_id, audit=entry
    )
    assert (data_dir / "master.key.next").exists()

    reopened = Keyring.open(data_dir, environ={})
    assert reopened.current_id == new.key_id and reopened.rotating
    restarted = Vault(backend.store, reopened)
    await restarted.start()
    assert {r.master_key_id for r in await backend.store.list_data_keys()} == {new.key_id}
    assert not (data_dir / "master.key.next").exists()
    assert Keyring.open(data_dir, environ={}).current_id == new.key_id
    reader = make_agent(ORG_A, "reader")
    await restarted.grants.add(ORG_A, SecretGrant("github-token", role="worker"), actor=ADMIN)
    assert await restarted.read_for_agent(ORG_A, reader.identity, "github-token") == SECRET_VALUE


async def test_an_environment_rotation_uses_the_previous_key_variable(backend: Backend) -> None:
    old = MasterKey.generate()
    vault = Vault(
        backend.store, Keyring.open(Path("unused"), environ={MASTER_KEY_ENV: old.to_text()})
    )
    await vault.start()
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    new = MasterKey.generate()
    env = {MASTER_KEY_ENV: new.to_text(), PREVIOUS_MASTER_KEYS_ENV: old.to_text()}
    restarted = Vault(backend.store, Keyring.open(Path("unused"), environ=env))
    await restarted.start()
    assert {r.master_key_id for r in await backend.store.list_data_keys()} == {new.key_id}
    await Vault(backend.store, Keyring(new)).start()  # the old key is no longer needed


async def test_a_data_key_created_under_the_old_key_is_rewrapped_on_first_use(
    backend: Backend, keyring: Keyring
) -> None:
    vault = Vault(backend.store, keyring)
    await vault.start()
    old_id = keyring.current_id
    # Created concurrently with the rotation: wrapped under the old key, stored after it.
    _, straggler = keyring.new_data_key(ORG_A, now=datetime.now(UTC))
    keyring.begin_rotation(MasterKey.generate())
    assert straggler.master_key_id == old_id
    entry = vault.audit.entry(
        ORG_A, actor=ADMIN, action=AuditAction.KEY_CREATE, target="data-key", allowed=True
    )
    await backend.store.create_data_key(straggler, audit=entry)
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    stored = await backend.store.get_data_key(ORG_A)
    assert stored is not None and stored.master_key_id == keyring.current_id


def test_wrapping_binds_the_org_id() -> None:
    keyring = Keyring(MasterKey.generate())
    data_key = crypto.generate_key()
    record = keyring.wrap(ORG_A, data_key, created_at=datetime.now(UTC))
    assert keyring.unwrap(record) == data_key
    moved = type(record)(ORG_B, record.wrapped_key, record.master_key_id, record.created_at)
    with pytest.raises(Unavailable, match=ORG_B):
        keyring.unwrap(moved)
