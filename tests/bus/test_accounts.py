"""The bus authority: keys kept, plans compiled into account JWTs, tenants admitted to fit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from corral.bus import BusAuthority, JetStreamCaps, jwt
from corral.domain.errors import Conflict, InvalidInput, NotFound
from corral.domain.plans import PLANS
from tests.bus.conftest import CAPS, LIMITS, PLATFORM_STORAGE, MiB


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


def test_an_org_account_compiles_the_plan_and_shares_only_with_the_platform(
    authority: BusAuthority,
) -> None:
    standard = PLANS["standard"].bus
    authority.admit("acme", standard)
    claims = jwt.decode(authority.org_account_jwt("acme"))
    assert claims["iss"] == authority.operator_public_key
    limits = claims["nats"]["limits"]
    assert (limits["conn"], limits["payload"]) == (100, 1024 * 1024)
    assert (limits["mem_storage"], limits["disk_storage"]) == (32 * MiB, 256 * MiB)
    assert (limits["streams"], limits["consumer"], limits["max_bytes_required"]) == (8, 128, True)
    exports = {e["subject"]: e for e in claims["nats"]["exports"]}
    assert set(exports) == {
        "org.acme.agents.>",
        "platform.agents.status",
        "org.acme.tasks.*.inbox",
        "org.acme.agents.*.control",
    }
    assert all(e["token_req"] for e in exports.values())

    platform = jwt.decode(authority.platform_account_jwt())
    imports = [i for i in platform["nats"]["imports"] if i["account"] == claims["sub"]]
    assert {i["subject"] for i in imports} == set(exports)
    for entry in imports:
        activation = jwt.decode(entry["token"])  # signed by the org, for PLATFORM only
        assert activation["iss"] == claims["sub"]
        assert activation["sub"] == authority.platform_account


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
    caps = JetStreamCaps(memory=16 * MiB, storage=120 * MiB)
    authority = BusAuthority(tmp_path / "bus", caps=caps, platform_storage=PLATFORM_STORAGE)
    authority.admit("a", LIMITS)  # 32 + 32 of 120
    authority.admit("b", LIMITS)  # 96 of 120
    with pytest.raises(Conflict, match=r"96 MiB of 120 MiB storage"):
        authority.admit("c", LIMITS)
    assert authority.orgs() == ["a", "b"]
    authority.admit("b", dataclasses.replace(LIMITS, jetstream_storage=56 * MiB))  # plan change
    with pytest.raises(Conflict, match="memory"):
        authority.admit(
            "m",
            dataclasses.replace(
                LIMITS, jetstream_memory=9 * MiB, jetstream_storage=0, inbox_max_bytes=0
            ),
        )
    authority.forget("b")
    authority.admit("c", LIMITS)


def test_names_that_cannot_be_subject_tokens_are_refused(authority: BusAuthority) -> None:
    for bad in ("a.b", "*", ">", "a b", ""):
        with pytest.raises(InvalidInput):
            authority.admit(bad, LIMITS)
    authority.admit("a", LIMITS)
    with pytest.raises(InvalidInput):
        authority.mint_agent_creds("a", "a1.>", ttl_seconds=60)
    with pytest.raises(NotFound):
        authority.mint_agent_creds("zzz", "a1", ttl_seconds=60)


def test_public_exports_carry_no_activation_tokens(tmp_path: Path) -> None:
    authority = BusAuthority(tmp_path / "bus", caps=CAPS, private_exports=False)
    authority.admit("a", LIMITS)
    exports = jwt.decode(authority.org_account_jwt("a"))["nats"]["exports"]
    assert not any(e.get("token_req") for e in exports)
    imports = jwt.decode(authority.platform_account_jwt())["nats"]["imports"]
    assert imports and not any("token" in i for i in imports)
