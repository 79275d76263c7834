"""The vault's secrets: versions, listing without values, limits, integrity, crypto-shredding."""

from __future__ import annotations

import pytest

from corral.domain.errors import CorralError, InvalidInput, NotFound, Unavailable
from corral.domain.grants import SecretGrant
from corral.domain.secrets import MAX_SECRET_BYTES
from corral.vault.service import Vault
from tests.vault.conftest import ORG_A, ORG_B, SECRET_VALUE, Backend, make_agent

ADMIN = "apikey:test"


async def test_put_creates_version_one_then_increments(vault: Vault) -> None:
    first = await vault.put(ORG_A, "github-token", b"one", actor=ADMIN)
    second = await vault.put(ORG_A, "github-token", b"two", actor=ADMIN)
    assert (first.name, first.version, second.version) == ("github-token", 1, 2)
    assert second.created_at == first.created_at
    assert second.updated_at >= first.updated_at
    assert (await vault.info(ORG_A, "github-token")).version == 2


async def test_listing_returns_names_and_versions_never_values(vault: Vault) -> None:
    await vault.put(ORG_A, "slack-webhook", SECRET_VALUE, actor=ADMIN)
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    listed = await vault.list(ORG_A)
    assert [(i.name, i.version) for i in listed] == [("github-token", 1), ("slack-webhook", 1)]
    for info in listed:
        assert SECRET_VALUE.decode() not in repr(info)
        assert SECRET_VALUE.decode() not in str(info.to_wire())
        assert not any(isinstance(v, bytes) for v in info.to_wire().values())


async def test_an_org_lists_only_its_own_secrets(vault: Vault) -> None:
    await vault.put(ORG_A, "github-token", b"a", actor=ADMIN)
    await vault.put(ORG_B, "slack-webhook", b"b", actor=ADMIN)
    assert [i.name for i in await vault.list(ORG_B)] == ["slack-webhook"]
    with pytest.raises(NotFound):
        await vault.info(ORG_B, "github-token")


async def test_delete_removes_the_secret_and_unknown_names_are_not_found(vault: Vault) -> None:
    await vault.put(ORG_A, "github-token", b"x", actor=ADMIN)
    await vault.delete(ORG_A, "github-token", actor=ADMIN)
    assert await vault.list(ORG_A) == []
    with pytest.raises(NotFound):
        await vault.delete(ORG_A, "github-token", actor=ADMIN)


async def test_another_orgs_secret_cannot_be_deleted_by_name(vault: Vault) -> None:
    await vault.put(ORG_A, "github-token", b"x", actor=ADMIN)
    with pytest.raises(NotFound):
        await vault.delete(ORG_B, "github-token", actor=ADMIN)
    assert [i.name for i in await vault.list(ORG_A)] == ["github-token"]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "GitHub-Token",
        "-leading",
        "trailing-",
        "under_score",
        "a..b",
        "x" * 254,
        "sp ace",
        "github-token\n",
        "../etc",
    ],
)
async def test_bad_secret_names_are_refused(vault: Vault, name: str) -> None:
    with pytest.raises(InvalidInput):
        await vault.put(ORG_A, name, b"x", actor=ADMIN)


@pytest.mark.parametrize("name", ["github-token", "slack-webhook", "agent-ssh-prod", "a.b-c.d"])
async def test_dns_subdomain_names_are_accepted(vault: Vault, name: str) -> None:
    assert (await vault.put(ORG_A, name, b"x", actor=ADMIN)).name == name


async def test_a_value_over_the_limit_is_refused_with_its_size(vault: Vault) -> None:
    too_big = SECRET_VALUE * (MAX_SECRET_BYTES // len(SECRET_VALUE) + 1)
    with pytest.raises(InvalidInput) as caught:
        await vault.put(ORG_A, "big", too_big, actor=ADMIN)
    assert str(len(too_big)) in str(caught.value)
    assert SECRET_VALUE.decode() not in str(caught.value)
    assert (await vault.put(ORG_A, "big", b"x" * MAX_SECRET_BYTES, actor=ADMIN)).version == 1


async def test_a_value_must_be_bytes(vault: Vault) -> None:
    with pytest.raises(InvalidInput):
        await vault.put(ORG_A, "github-token", "text", actor=ADMIN)  # type: ignore[arg-type]


async def test_putting_into_an_unknown_org_is_not_found(vault: Vault) -> None:
    with pytest.raises(NotFound):
        await vault.put("org_missing000", "github-token", b"x", actor=ADMIN)  # type: ignore[arg-type]


async def test_a_ciphertext_moved_to_another_org_does_not_decrypt(
    vault: Vault, backend: Backend
) -> None:
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    await vault.put(ORG_B, "github-token", b"org b's own", actor=ADMIN)
    await backend.move_secret(ORG_A, "github-token", to_org=ORG_B, to_name="github-token")
    reader = make_agent(ORG_B, "reader")
    await vault.grants.add(ORG_B, SecretGrant("*", role="worker"), actor=ADMIN)
    with pytest.raises(Unavailable) as caught:
        await vault.read_for_agent(ORG_B, reader.identity, "github-token")
    assert "does not decrypt" in str(caught.value)
    assert SECRET_VALUE.decode() not in str(caught.value)
    records = await vault.audit.list(ORG_B)
    assert records[0].action == "secret.read" and not records[0].allowed


async def test_a_ciphertext_renamed_within_the_org_does_not_decrypt(
    vault: Vault, backend: Backend
) -> None:
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    await vault.put(ORG_A, "slack-webhook", b"other", actor=ADMIN)
    await backend.move_secret(ORG_A, "github-token", to_org=ORG_A, to_name="slack-webhook")
    reader = make_agent(ORG_A, "reader")
    await vault.grants.add(ORG_A, SecretGrant("*", role="worker"), actor=ADMIN)
    with pytest.raises(Unavailable, match="does not decrypt"):
        await vault.read_for_agent(ORG_A, reader.identity, "slack-webhook")
    assert await vault.read_for_agent(ORG_A, reader.identity, "github-token") == SECRET_VALUE


async def test_an_old_ciphertext_replayed_under_another_version_does_not_decrypt(
    vault: Vault, backend: Backend
) -> None:
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    await backend.set_secret_version(ORG_A, "github-token", 7)
    reader = make_agent(ORG_A, "reader")
    await vault.grants.add(ORG_A, SecretGrant("github-token", role="worker"), actor=ADMIN)
    with pytest.raises(Unavailable, match="does not decrypt"):
        await vault.read_for_agent(ORG_A, reader.identity, "github-token")


async def test_a_data_key_moved_to_another_org_does_not_unwrap(
    vault: Vault, backend: Backend
) -> None:
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    await vault.put(ORG_B, "github-token", b"b", actor=ADMIN)
    await backend.swap_data_keys(ORG_B, ORG_A)
    reader = make_agent(ORG_B, "reader")
    await vault.grants.add(ORG_B, SecretGrant("*", role="worker"), actor=ADMIN)
    with pytest.raises(Unavailable, match="data key"):
        await vault.read_for_agent(ORG_B, reader.identity, "github-token")


async def test_destroying_an_org_shreds_its_data_key(vault: Vault, backend: Backend) -> None:
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    await vault.put(ORG_B, "github-token", b"b", actor=ADMIN)
    await vault.grants.add(ORG_A, SecretGrant("*", role="worker"), actor=ADMIN)
    await vault.destroy_org(ORG_A, actor=ADMIN)
    assert await backend.store.get_data_key(ORG_A) is None
    assert await vault.list(ORG_A) == []
    assert await vault.grants.list(ORG_A) == []
    assert await backend.store.get_data_key(ORG_B) is not None
    audit = await vault.audit.list(ORG_A)
    assert audit[0].action == "key.destroy"  # the log survives the shredding


async def test_a_restored_ciphertext_of_a_destroyed_org_cannot_be_read(
    vault: Vault, backend: Backend
) -> None:
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    saved = await backend.store.get_secret(ORG_A, "github-token")
    assert saved is not None
    await vault.destroy_org(ORG_A, actor=ADMIN)
    # An attacker restores the row from a backup; a fresh data key is made for new writes.
    await vault.put(ORG_A, "github-token", b"new", actor=ADMIN)
    await backend.move_secret(ORG_A, "github-token", to_org=ORG_A, to_name="github-token")
    if backend.memory is not None:
        backend.memory.secrets[(ORG_A, "github-token")] = saved
    else:
        assert backend.db is not None
        from sqlalchemy import update

        from corral.store.schema import SecretRow

        async with backend.db.sessions() as s, s.begin():
            await s.execute(
                update(SecretRow)
                .where(SecretRow.org_id == ORG_A, SecretRow.name == "github-token")
                .values(ciphertext=saved.ciphertext, version=saved.version)
            )
    reader = make_agent(ORG_A, "reader")
    await vault.grants.add(ORG_A, SecretGrant("*", role="worker"), actor=ADMIN)
    with pytest.raises(Unavailable, match="does not decrypt"):
        await vault.read_for_agent(ORG_A, reader.identity, "github-token")


async def test_deleting_the_org_row_cascades_to_its_data_key(
    vault: Vault, backend: Backend
) -> None:
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    await backend.delete_org_row(ORG_A)
    assert await backend.store.get_data_key(ORG_A) is None
    assert await vault.list(ORG_A) == []


async def test_no_secret_value_reaches_audit_records_or_reprs(
    vault: Vault, backend: Backend
) -> None:
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    reader = make_agent(ORG_A, "reader")
    await vault.grants.add(ORG_A, SecretGrant("github-*", role="worker"), actor=ADMIN)
    assert await vault.read_for_agent(ORG_A, reader.identity, "github-token") == SECRET_VALUE
    stored = await backend.store.get_secret(ORG_A, "github-token")
    data_key = await backend.store.get_data_key(ORG_A)
    assert SECRET_VALUE not in (stored.ciphertext if stored else b"")
    texts = [repr(stored), repr(data_key), repr(vault.keyring)]
    for record in await vault.audit.list(ORG_A, limit=1000):
        texts += [record.actor, record.target, record.detail, str(record.to_wire())]
    assert texts
    for text in texts:
        assert SECRET_VALUE.decode() not in text


async def test_errors_never_carry_the_value(vault: Vault) -> None:
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    outsider = make_agent(ORG_B, "outsider")
    failures: list[CorralError] = []
    for org, name in [(ORG_A, "github-token"), (ORG_B, "github-token"), (ORG_A, "nope")]:
        try:
            await vault.read_for_agent(org, outsider.identity, name)
        except CorralError as exc:
            failures.append(exc)
    assert len(failures) == 3
    for failure in failures:
        assert SECRET_VALUE.decode() not in str(failure)
        assert SECRET_VALUE.decode() not in str(failure.to_wire())


async def test_a_platform_read_is_audited_whatever_its_outcome(
    vault: Vault, backend: Backend
) -> None:
    why = "provider key of model m"
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    await vault.put(ORG_A, "slack-webhook", b"other", actor=ADMIN)
    assert (
        await vault.read_for_platform(ORG_A, "github-token", actor="system:gateway", why=why)
        == SECRET_VALUE
    )
    with pytest.raises(NotFound):
        await vault.read_for_platform(ORG_A, "nope", actor="system:gateway", why=why)
    await backend.move_secret(ORG_A, "github-token", to_org=ORG_A, to_name="slack-webhook")
    with pytest.raises(Unavailable, match="does not decrypt"):
        await vault.read_for_platform(ORG_A, "slack-webhook", actor="system:gateway", why=why)
    reads = [
        (r.actor, r.target, r.allowed, r.detail) for r in await vault.audit.list(ORG_A, limit=3)
    ]
    assert reads[0][:3] == ("system:gateway", "slack-webhook", False)
    assert reads[0][3].startswith("failed: ") and reads[0][3].endswith(f"({why})")
    assert reads[1] == ("system:gateway", "nope", False, f"not found ({why})")
    assert reads[2] == ("system:gateway", "github-token", True, f"version 1 ({why})")
