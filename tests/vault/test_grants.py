"""Grants: the pure matching rules (with properties), and adding, listing, removing them."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.domain.errors import InvalidInput, NotFound
from corral.domain.grants import SecretGrant, validate_pattern
from corral.vault.service import Vault
from tests.vault.conftest import ORG_A, ORG_B

ADMIN = "apikey:test"

_label = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=12)
secret_names = st.lists(_label, min_size=1, max_size=4).map("-".join)
roles = st.sampled_from(["worker", "reviewer", "planner"])


@given(secret_names)
def test_an_exact_pattern_matches_only_its_own_name(name: str) -> None:
    grant = SecretGrant(name, role="worker")
    assert grant.matches(name)
    assert not grant.matches(name + "x")
    assert not grant.matches("x" + name)
    assert not grant.is_glob


@given(secret_names, secret_names)
def test_a_prefix_glob_matches_exactly_the_names_with_that_prefix(prefix: str, other: str) -> None:
    grant = SecretGrant(f"{prefix}-*", role="worker")
    assert grant.is_glob
    assert grant.matches(f"{prefix}-{other}")
    assert grant.matches(other) == other.startswith(f"{prefix}-")


@given(secret_names, roles, roles)
def test_a_role_grant_covers_only_agents_of_that_role(name: str, role: str, other: str) -> None:
    grant = SecretGrant(name, role=role)
    assert grant.covers("agent-a", role, name)
    assert grant.covers("agent-a", other, name) == (role == other)


@given(secret_names, roles)
def test_an_agent_grant_covers_only_that_agent_whatever_its_role(name: str, role: str) -> None:
    grant = SecretGrant(name, agent="agent-acme-corp-a-0001")
    assert grant.covers("agent-acme-corp-a-0001", role, name)
    assert not grant.covers("agent-acme-corp-b-0001", role, name)


@given(secret_names, secret_names)
def test_no_grant_covers_a_name_its_pattern_does_not_match(pattern: str, name: str) -> None:
    grant = SecretGrant(pattern, role="worker")
    assert grant.covers("a", "worker", name) == (pattern == name)


def test_the_seed_role_is_expressible() -> None:
    grants = [
        SecretGrant(p, role="worker") for p in ("github-token", "slack-webhook", "agent-ssh-*")
    ]
    allowed = {"github-token", "slack-webhook", "agent-ssh-prod", "agent-ssh-"}
    for name in [*allowed, "aws-root", "github-token-2", "agent-ssh", "xagent-ssh-prod"]:
        assert any(g.covers("a", "worker", name) for g in grants) == (name in allowed)


@pytest.mark.parametrize(
    "pattern", ["", "Agent-SSH-*", "a b", "a/b", "x" * 254, "agent-[ssh", "a_b", "$(id)", "x*\n"]
)
def test_malformed_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidInput):
        validate_pattern(pattern)
    with pytest.raises(InvalidInput):
        SecretGrant(pattern, role="worker")


def test_a_grant_names_a_role_or_an_agent_not_both() -> None:
    with pytest.raises(InvalidInput):
        SecretGrant("x", role="worker", agent="agent-1")
    with pytest.raises(InvalidInput):
        SecretGrant("x", role="Not A Label")


def test_grants_read_from_the_wire_reject_unknown_fields() -> None:
    assert SecretGrant.from_wire({"pattern": "agent-ssh-*", "role": "worker"}) == SecretGrant(
        "agent-ssh-*", role="worker"
    )
    with pytest.raises(InvalidInput):
        SecretGrant.from_wire({"pattern": "x", "role": "worker", "verbs": ["list"]})
    with pytest.raises(InvalidInput):
        SecretGrant.from_wire({"role": "worker"})


async def test_nothing_is_granted_by_default(vault: Vault) -> None:
    assert await vault.grants.list(ORG_A) == []


async def test_grants_are_added_listed_and_removed_by_id(vault: Vault) -> None:
    first = await vault.grants.add(ORG_A, SecretGrant("github-token", role="worker"), actor=ADMIN)
    second = await vault.grants.add(ORG_A, SecretGrant("agent-ssh-*", agent="agent-x"), actor=ADMIN)
    assert first.id != second.id
    assert [g.id for g in await vault.grants.list(ORG_A)] == [first.id, second.id]
    assert second.to_wire()["pattern"] == "agent-ssh-*"
    await vault.grants.remove(ORG_A, first.id, actor=ADMIN)
    assert [g.id for g in await vault.grants.list(ORG_A)] == [second.id]
    actions = [(r.action, r.target) for r in await vault.audit.list(ORG_A)]
    assert actions[:3] == [
        ("grant.remove", "github-token"),
        ("grant.add", "agent-ssh-*"),
        ("grant.add", "github-token"),
    ]


async def test_a_grant_must_name_exactly_one_subject_in_the_vault(vault: Vault) -> None:
    with pytest.raises(InvalidInput, match="exactly one"):
        await vault.grants.add(ORG_A, SecretGrant("github-token"), actor=ADMIN)


async def test_another_orgs_grant_cannot_be_seen_or_removed(vault: Vault) -> None:
    grant = await vault.grants.add(ORG_A, SecretGrant("github-token", role="worker"), actor=ADMIN)
    assert await vault.grants.list(ORG_B) == []
    with pytest.raises(NotFound):
        await vault.grants.remove(ORG_B, grant.id, actor=ADMIN)
    assert [g.id for g in await vault.grants.list(ORG_A)] == [grant.id]


async def test_removing_an_unknown_grant_is_not_found(vault: Vault) -> None:
    with pytest.raises(NotFound):
        await vault.grants.remove(ORG_A, "grant_0000000000000000", actor=ADMIN)


async def test_a_grant_for_an_unknown_org_is_not_found(vault: Vault) -> None:
    with pytest.raises(NotFound):
        await vault.grants.add(
            "org_missing000",  # type: ignore[arg-type]
            SecretGrant("github-token", role="worker"),
            actor=ADMIN,
        )
