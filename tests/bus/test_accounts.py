"""The bus authority: keys kept, plans compiled into account JWTs, tenants admitted to fit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from corral.bus import BusAuthority, JetStreamCaps, jwt
from corral.domain.errors import Conflict, InvalidInput, NotFound
from corral.domain.plans import PLANS
from tests.bus.conftest import CAPS, LIMITS, MiB


def test_keys_are_created_once_private_and_reused(tmp_path: Path) -> None:
    first = BusAuthority(tmp_path / "bus", caps=CAPS)
    first.admit("a", LIMITS)
    again = BusAuthority(tmp_path / "bus", caps=CAPS)
    assert again.operator_public_key == first.operator_public_key
    assert again.platform_account == first.platform_account
    assert again.org_account("a") == first.org_account("a")
    for path in [tmp_path / "bus" / "operator.nk", tmp_path / "bus" / "orgs" / "a.json"]:
        assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "bus").stat().st_mode & 0o777 == 0o700


def test_an_external_operators_keys_are_used_as_given(tmp_path: Path) -> None:
    operator = jwt.NKey.generate(jwt.KeyKind.OPERATOR)
    system = jwt.NKey.generate(jwt.KeyKind.ACCOUNT)
    authority = BusAuthority(
        tmp_path / "bus", caps=None, operator_seed=operator.seed, system_seed=system.seed
    )
    trust = authority.trust()
    claims = jwt.decode(trust.operator_jwt)
    assert claims["sub"] == operator.public_key
    assert claims["nats"]["system_account"] == system.public_key == trust.system_account


def test_an_org_account_compiles_the_plan_exports_nothing_and_imports_only_platform_constants(
    authority: BusAuthority,
) -> None:
    standard = PLANS["standard"].bus
    authority.admit("acme", standard)
    claims = jwt.decode(authority.org_account_jwt("acme"))
    assert claims["iss"] == authority.operator_public_key
    limits = claims["nats"]["limits"]
    assert (limits["conn"], limits["payload"]) == (100, 1024 * 1024)
    assert (limits["mem_storage"], limits["disk_storage"]) == (0, 160 * MiB)  # file only
    streams = standard.inbox_max_bytes + standard.events_max_bytes + standard.objects_max_bytes
    assert streams == limits["disk_storage"]  # INBOX, EVENTS and the object store
    assert (limits["streams"], limits["consumer"], limits["max_bytes_required"]) == (8, 128, True)
    assert "exports" not in claims["nats"]
    imports = claims["nats"]["imports"]
    assert {i["account"] for i in imports} == {authority.platform_account}
    assert {i["subject"] for i in imports} == {
        "platform.broadcast.>",
        f"platform.vault.get.{claims['sub']}",  # the server holds the org to its own key
    }

    platform = jwt.decode(authority.platform_account_jwt())["nats"]
    assert "imports" not in platform
    assert (platform["limits"]["mem_storage"], platform["limits"]["disk_storage"]) == (0, 0)


def test_the_platform_jwt_is_the_same_size_for_one_org_and_a_thousand(tmp_path: Path) -> None:
    authority = BusAuthority(tmp_path / "bus", caps=None)
    authority.admit("org-0000", LIMITS)
    one = len(authority.platform_account_jwt())
    for n in range(1, 1000):
        authority.admit(f"org-{n:04d}", LIMITS)
    assert len(authority.orgs()) == 1000
    assert len(authority.platform_account_jwt()) == one
    assert len(authority.org_account_jwt("org-0999")) == len(authority.org_account_jwt("org-0000"))


def test_agent_credentials_are_least_privilege_and_expire(authority: BusAuthority) -> None:
    authority.admit("a", LIMITS)
    creds = authority.mint_agent_creds("a", "a1", ttl_seconds=60)
    token = creds.creds.splitlines()[1]
    claims = jwt.decode(token)
    assert claims["iss"] == authority.org_account("a") and claims["sub"] == creds.public_key
    assert claims["exp"] == int(creds.expires_at.timestamp())
    allowed = claims["nats"]["pub"]["allow"] + claims["nats"]["sub"]["allow"]
    assert all("a2" not in s and "*" not in s for s in allowed)
    assert "org.a.tasks.a1.inbox" not in allowed  # tasks come only through its consumer
    assert f"{creds.inbox_prefix}.>" in claims["nats"]["sub"]["allow"]
    assert claims["nats"]["resp"]["max"] == 1
    assert authority.agent_for_user("a", creds.public_key) == "a1"
    seed = next(line for line in creds.creds.splitlines() if line.startswith("SU"))
    assert seed not in repr(creds)  # the seed never shows (a public key may contain "SU")


def test_revoking_an_agent_revokes_every_key_minted_for_it(authority: BusAuthority) -> None:
    authority.admit("a", LIMITS)
    keys = {authority.mint_agent_creds("a", "a1", ttl_seconds=60).public_key for _ in range(2)}
    other = authority.mint_agent_creds("a", "a2", ttl_seconds=60).public_key
    assert set(authority.revoke_agent("a", "a1")) == keys
    revocations = jwt.decode(authority.org_account_jwt("a"))["nats"]["revocations"]
    assert set(revocations) == keys and other not in revocations


def test_admission_sums_every_reservation_against_the_caps(tmp_path: Path) -> None:
    caps = JetStreamCaps(memory=16 * MiB, storage=80 * MiB)
    authority = BusAuthority(tmp_path / "bus", caps=caps)
    authority.admit("a", LIMITS)  # 32 of 80
    authority.admit("b", LIMITS)  # 64 of 80: PLATFORM reserves nothing
    with pytest.raises(Conflict, match=r"64 MiB of 80 MiB storage"):
        authority.admit("c", LIMITS)
    assert authority.orgs() == ["a", "b"]
    authority.admit("b", dataclasses.replace(LIMITS, jetstream_storage=48 * MiB))  # plan change
    with pytest.raises(Conflict, match="memory"):
        authority.admit("m", dataclasses.replace(LIMITS, jetstream_memory=17 * MiB))
    authority.forget("b")
    authority.admit("c", LIMITS)


def test_a_plan_whose_streams_do_not_fit_its_storage_is_refused(authority: BusAuthority) -> None:
    with pytest.raises(InvalidInput, match="cannot exceed"):
        authority.admit("a", dataclasses.replace(LIMITS, events_max_bytes=17 * MiB))
    with pytest.raises(InvalidInput, match="positive"):
        authority.admit("a", dataclasses.replace(LIMITS, events_max_bytes=0))
    with pytest.raises(InvalidInput, match="OBJECTS"):
        authority.admit(
            "a", dataclasses.replace(LIMITS, objects_max_bytes=LIMITS.jetstream_storage)
        )
    assert authority.orgs() == []


def test_every_plan_reserves_no_memory_and_fits_its_streams() -> None:
    for plan in PLANS.values():
        bus = plan.bus
        assert bus.jetstream_memory == 0, plan.name
        streams = bus.inbox_max_bytes + bus.events_max_bytes + bus.objects_max_bytes
        assert streams <= bus.jetstream_storage, plan.name
        # the object store holds at least one payload or result of the plan's maximum
        assert bus.objects_max_bytes >= plan.max_object_bytes, plan.name


def test_names_that_cannot_be_subject_tokens_are_refused(authority: BusAuthority) -> None:
    for bad in ("a.b", "*", ">", "a b", ""):
        with pytest.raises(InvalidInput):
            authority.admit(bad, LIMITS)
    authority.admit("a", LIMITS)
    with pytest.raises(InvalidInput):
        authority.mint_agent_creds("a", "a1.>", ttl_seconds=60)
    with pytest.raises(NotFound):
        authority.mint_agent_creds("zzz", "a1", ttl_seconds=60)
