"""Agents reading secrets with signed requests, and everything a compromised agent might try."""

from __future__ import annotations

from typing import Any

import pytest

from corral.domain.agent_auth import SecretRequest
from corral.domain.errors import CorralError, NotFound, PermissionDenied
from corral.domain.grants import SecretGrant
from corral.sdk.signing import sign_request
from corral.vault.access import NonceCache, SecretAccess, user_public_key
from corral.vault.service import Vault
from tests.vault.conftest import (
    ORG_A,
    ORG_B,
    SECRET_VALUE,
    SLUGS,
    TestAgent,
    directory,
    make_agent,
)

ADMIN = "apikey:test"
NOW = 1_750_000_000


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def alice() -> TestAgent:
    return make_agent(ORG_A, "alice", role="worker")


@pytest.fixture
def bob() -> TestAgent:
    return make_agent(ORG_A, "bob", role="reviewer")


@pytest.fixture
def mallory() -> TestAgent:
    """An agent of org B: compromised, trying to reach org A's secrets."""
    return make_agent(ORG_B, "mallory", role="worker")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def access(
    vault: Vault, alice: TestAgent, bob: TestAgent, mallory: TestAgent, clock: Clock
) -> SecretAccess:
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    await vault.put(ORG_A, "agent-ssh-prod", b"ssh-a", actor=ADMIN)
    await vault.put(ORG_A, "aws-root", b"root-a", actor=ADMIN)
    await vault.put(ORG_B, "github-token", b"token-b", actor=ADMIN)
    await vault.grants.add(ORG_A, SecretGrant("github-token", role="worker"), actor=ADMIN)
    await vault.grants.add(ORG_B, SecretGrant("github-token", role="worker"), actor=ADMIN)
    return SecretAccess(vault, directory(alice, bob, mallory), clock=clock)


def request(agent: TestAgent, secret: str, *, org: str | None = None, **kw: Any) -> dict[str, Any]:
    return sign_request(
        agent.seed,
        org=org or agent.identity.org_id,
        agent_id=kw.pop("agent_id", agent.identity.agent_id),
        secret=secret,
        ts=kw.pop("ts", NOW),
        **kw,
    )


async def last_audit(vault: Vault, org: str) -> tuple[str, str, bool, str]:
    record = (await vault.audit.list(org, limit=1))[0]  # type: ignore[arg-type]
    return record.actor, record.target, record.allowed, record.detail


async def test_an_agent_reads_a_secret_granted_to_its_role(
    access: SecretAccess, vault: Vault, alice: TestAgent
) -> None:
    assert await access.read(request(alice, "github-token"), org_id=ORG_A) == SECRET_VALUE
    actor, target, allowed, detail = await last_audit(vault, ORG_A)
    assert (actor, target, allowed) == (f"agent:{alice.identity.agent_id}", "github-token", True)
    assert "version 1" in detail and "role worker" in detail


async def test_an_agent_may_name_its_org_by_slug(access: SecretAccess, alice: TestAgent) -> None:
    body = request(alice, "github-token", org=SLUGS[ORG_A])
    assert await access.read(body, org_id=ORG_A, org_slug=SLUGS[ORG_A]) == SECRET_VALUE


async def test_an_ungranted_secret_is_denied_and_audited(
    access: SecretAccess, vault: Vault, alice: TestAgent
) -> None:
    with pytest.raises(PermissionDenied, match="no grant covers"):
        await access.read(request(alice, "aws-root"), org_id=ORG_A)
    actor, target, allowed, detail = await last_audit(vault, ORG_A)
    assert (actor, target, allowed) == (f"agent:{alice.identity.agent_id}", "aws-root", False)
    assert "no grant covers" in detail


async def test_a_grant_to_another_role_does_not_cover_the_agent(
    access: SecretAccess, bob: TestAgent
) -> None:
    with pytest.raises(PermissionDenied):
        await access.read(request(bob, "github-token"), org_id=ORG_A)


async def test_a_glob_grant_covers_matching_names_only(
    access: SecretAccess, vault: Vault, bob: TestAgent
) -> None:
    await vault.grants.add(ORG_A, SecretGrant("agent-ssh-*", role="reviewer"), actor=ADMIN)
    assert await access.read(request(bob, "agent-ssh-prod"), org_id=ORG_A) == b"ssh-a"
    with pytest.raises(PermissionDenied):
        await access.read(request(bob, "aws-root"), org_id=ORG_A)


async def test_a_grant_to_one_agent_covers_that_agent_only(
    access: SecretAccess, vault: Vault, alice: TestAgent, bob: TestAgent
) -> None:
    await vault.grants.add(ORG_A, SecretGrant("aws-root", agent=bob.identity.agent_id), actor=ADMIN)
    assert await access.read(request(bob, "aws-root"), org_id=ORG_A) == b"root-a"
    with pytest.raises(PermissionDenied):
        await access.read(request(alice, "aws-root"), org_id=ORG_A)


async def test_a_granted_but_missing_secret_is_not_found(
    access: SecretAccess, vault: Vault, alice: TestAgent
) -> None:
    await vault.grants.add(ORG_A, SecretGrant("missing-*", role="worker"), actor=ADMIN)
    with pytest.raises(NotFound):
        await access.read(request(alice, "missing-one"), org_id=ORG_A)
    assert (await last_audit(vault, ORG_A))[2] is False


async def test_revoking_a_grant_denies_the_next_read(
    access: SecretAccess, vault: Vault, alice: TestAgent
) -> None:
    assert await access.read(request(alice, "github-token"), org_id=ORG_A) == SECRET_VALUE
    for grant in await vault.grants.list(ORG_A):
        await vault.grants.remove(ORG_A, grant.id, actor=ADMIN)
    with pytest.raises(PermissionDenied):
        await access.read(request(alice, "github-token"), org_id=ORG_A)


# -- a compromised agent of org B -------------------------------------------------------------


async def test_naming_the_other_org_in_the_payload_is_denied(
    access: SecretAccess, vault: Vault, mallory: TestAgent
) -> None:
    body = request(mallory, "github-token", org=ORG_A)  # the server says: it came from org B
    with pytest.raises(PermissionDenied, match="another organization"):
        await access.read(body, org_id=ORG_B)
    _, target, allowed, detail = await last_audit(vault, ORG_B)
    assert (target, allowed) == ("github-token", False) and "another organization" in detail


async def test_claiming_an_agent_id_of_the_other_org_is_denied(
    access: SecretAccess, alice: TestAgent, mallory: TestAgent
) -> None:
    forged = request(mallory, "github-token", org=ORG_B, agent_id=alice.identity.agent_id)
    with pytest.raises(PermissionDenied, match="no such agent"):
        await access.read(forged, org_id=ORG_B)
    forged_both = request(mallory, "github-token", org=ORG_A, agent_id=alice.identity.agent_id)
    with pytest.raises(PermissionDenied):
        await access.read(forged_both, org_id=ORG_B)


async def test_presenting_another_agents_public_key_is_denied(
    access: SecretAccess, alice: TestAgent, mallory: TestAgent
) -> None:
    # Mallory signs with her own seed but claims to be alice with alice's public key ...
    forged = request(mallory, "github-token", org=ORG_A, agent_id=alice.identity.agent_id)
    forged["publicKey"] = alice.public_key
    with pytest.raises(PermissionDenied, match="bad signature"):
        await access.read(forged, org_id=ORG_A)  # ... even if she got into org A's account
    # ... or keeps her own key while claiming alice's id.
    own_key = request(mallory, "github-token", org=ORG_A, agent_id=alice.identity.agent_id)
    with pytest.raises(PermissionDenied, match="public key"):
        await access.read(own_key, org_id=ORG_A)


async def test_replaying_another_agents_request_is_denied(
    access: SecretAccess, vault: Vault, alice: TestAgent
) -> None:
    captured = request(alice, "github-token")
    assert await access.read(captured, org_id=ORG_A) == SECRET_VALUE
    with pytest.raises(PermissionDenied, match="another organization"):
        await access.read(captured, org_id=ORG_B)  # replayed from org B's account
    with pytest.raises(PermissionDenied, match="replayed"):
        await access.read(captured, org_id=ORG_A)  # replayed in org A itself
    _, _, allowed, detail = await last_audit(vault, ORG_A)
    assert not allowed and "replayed" in detail


async def test_an_altered_request_fails_its_signature(
    access: SecretAccess, alice: TestAgent
) -> None:
    body = request(alice, "github-token")
    body["secret"] = "aws-root"
    with pytest.raises(PermissionDenied, match="bad signature"):
        await access.read(body, org_id=ORG_A)


async def test_an_expired_or_future_request_is_denied(
    access: SecretAccess, alice: TestAgent, clock: Clock
) -> None:
    with pytest.raises(PermissionDenied, match="window"):
        await access.read(request(alice, "github-token", ts=NOW - 61), org_id=ORG_A)
    with pytest.raises(PermissionDenied, match="window"):
        await access.read(request(alice, "github-token", ts=NOW + 61), org_id=ORG_A)
    clock.now = NOW + 60
    assert await access.read(request(alice, "github-token"), org_id=ORG_A) == SECRET_VALUE


async def test_a_nonce_is_forgotten_only_after_its_request_expired(
    access: SecretAccess, alice: TestAgent, clock: Clock
) -> None:
    body = request(alice, "github-token", nonce="ab" * 16)
    assert await access.read(body, org_id=ORG_A) == SECRET_VALUE
    clock.now = NOW + 61
    with pytest.raises(PermissionDenied, match="window"):
        await access.read(body, org_id=ORG_A)


async def test_an_unknown_agent_is_denied(access: SecretAccess, vault: Vault) -> None:
    stranger = make_agent(ORG_A, "stranger")
    with pytest.raises(PermissionDenied, match="no such agent"):
        await access.read(request(stranger, "github-token"), org_id=ORG_A)
    actor, _, allowed, _ = await last_audit(vault, ORG_A)
    assert actor == f"unverified-agent:{stranger.identity.agent_id}" and not allowed


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"org": ORG_A},
        [],
        {"org": ORG_A, "agentId": "a", "secret": "s", "nonce": "zz", "ts": NOW, "publicKey": "U"},
        {"org": 1, "agentId": "a", "secret": "s", "nonce": "ab" * 8, "ts": NOW},
    ],
)
async def test_a_malformed_request_is_denied_and_audited(
    access: SecretAccess, vault: Vault, body: Any
) -> None:
    with pytest.raises(PermissionDenied, match="malformed"):
        await access.read(body, org_id=ORG_A)
    assert (await last_audit(vault, ORG_A))[2] is False


async def test_a_flood_of_requests_is_refused_for_that_agent_alone(
    vault: Vault, alice: TestAgent, bob: TestAgent, clock: Clock
) -> None:
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    await vault.grants.add(ORG_A, SecretGrant("github-token", role="worker"), actor=ADMIN)
    await vault.grants.add(ORG_A, SecretGrant("github-token", role="reviewer"), actor=ADMIN)
    access = SecretAccess(vault, directory(alice, bob), clock=clock, nonces=NonceCache(per_agent=2))
    for _ in range(2):
        await access.read(request(alice, "github-token"), org_id=ORG_A)
    with pytest.raises(PermissionDenied, match="too many"):
        await access.read(request(alice, "github-token"), org_id=ORG_A)
    assert await access.read(request(bob, "github-token"), org_id=ORG_A) == SECRET_VALUE


async def test_denials_never_carry_a_value(
    access: SecretAccess, vault: Vault, alice: TestAgent, mallory: TestAgent
) -> None:
    attempts = [
        (request(mallory, "github-token", org=ORG_A), ORG_B),
        (request(mallory, "github-token", agent_id=alice.identity.agent_id), ORG_B),
        (request(alice, "aws-root"), ORG_A),
        (request(alice, "github-token", ts=0), ORG_A),
    ]
    errors: list[CorralError] = []
    for body, org in attempts:
        with pytest.raises(PermissionDenied) as caught:
            await access.read(body, org_id=org)
        errors.append(caught.value)
    texts = [str(e) for e in errors] + [str(e.to_wire()) for e in errors]
    for org in (ORG_A, ORG_B):
        texts += [str(r.to_wire()) for r in await vault.audit.list(org, limit=1000)]
    for text in texts:
        for value in (SECRET_VALUE, b"root-a", b"token-b"):
            assert value.decode() not in text


def test_only_user_nkeys_are_accepted_as_agent_keys(alice: TestAgent) -> None:
    assert user_public_key(alice.public_key) is not None
    assert user_public_key("A" + alice.public_key[1:]) is None  # an account key / bad crc
    last = "B" if alice.public_key.endswith("A") else "A"
    assert user_public_key(alice.public_key[:-1] + last) is None  # checksum broken
    assert user_public_key("not base32!") is None


def test_a_parsed_request_round_trips_through_the_wire(alice: TestAgent) -> None:
    body = request(alice, "github-token")
    assert SecretRequest.from_wire(body).to_wire() == body
