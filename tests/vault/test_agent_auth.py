"""The signed request format shared by the SDK (signing) and the vault (verification)."""

from __future__ import annotations

import json

import nkeys
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.domain.agent_auth import SecretRequest, b64url_decode, canonical_payload
from corral.domain.errors import InvalidInput
from corral.sdk.signing import seed_from_creds, sign_request, signed_request
from corral.vault.access import user_public_key
from tests.vault.conftest import ORG_A, make_agent

CREDS = """-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""


def test_the_canonical_payload_is_sorted_compact_json() -> None:
    payload = canonical_payload(org="o", agent_id="a", secret="s", nonce="ab", ts=5)
    assert payload == b'{"agentId":"a","nonce":"ab","org":"o","secret":"s","ts":5}'
    assert json.loads(payload) == {
        "agentId": "a",
        "nonce": "ab",
        "org": "o",
        "secret": "s",
        "ts": 5,
    }


@given(st.text(max_size=40), st.text(max_size=40))
def test_different_fields_never_give_the_same_payload(a: str, b: str) -> None:
    one = canonical_payload(org=a, agent_id=b, secret="s", nonce="n", ts=1)
    two = canonical_payload(org=b, agent_id=a, secret="s", nonce="n", ts=1)
    assert (one == two) == (a == b)


def test_a_signed_request_verifies_under_the_agents_public_key() -> None:
    agent = make_agent(ORG_A, "alice")
    request = signed_request(agent.seed, org=ORG_A, agent_id="alice", secret="github-token")
    assert request.public_key == agent.public_key
    key = user_public_key(request.public_key)
    assert key is not None
    key.verify(request.signature(), request.signed_payload())
    assert len(request.nonce) == 32 and request.ts > 1_700_000_000


def test_the_seed_is_read_from_the_creds_file_text() -> None:
    agent = make_agent(ORG_A, "alice")
    creds = CREDS.format(seed=agent.seed.decode())
    assert seed_from_creds(creds) == agent.seed
    body = sign_request(creds=creds, org=ORG_A, agent_id="alice", secret="github-token")
    assert body["publicKey"] == agent.public_key
    assert set(body) == {"org", "agentId", "secret", "nonce", "ts", "publicKey", "sig"}
    assert len(b64url_decode(body["sig"])) == 64
    assert "=" not in body["sig"]


def test_signing_needs_exactly_one_of_seed_and_creds() -> None:
    agent = make_agent(ORG_A, "alice")
    with pytest.raises(InvalidInput):
        sign_request(org="o", agent_id="a", secret="s")
    with pytest.raises(InvalidInput):
        sign_request(agent.seed, creds="x", org="o", agent_id="a", secret="s")
    with pytest.raises(InvalidInput, match="no USER NKEY SEED"):
        sign_request(creds="nothing here", org="o", agent_id="a", secret="s")


def test_a_non_seed_is_refused_without_being_echoed() -> None:
    account_public = nkeys.from_seed(make_agent(ORG_A, "x").seed).public_key
    with pytest.raises(InvalidInput) as caught:
        signed_request(account_public, org="o", agent_id="a", secret="s")
    assert account_public.decode() not in str(caught.value)


@pytest.mark.parametrize(
    "change",
    [
        {"ts": "1"},
        {"ts": True},
        {"ts": -1},
        {"nonce": "ABCDEF0123456789"},
        {"nonce": "abc"},
        {"secret": ""},
        {"secret": "x" * 254},
        {"agentId": None},
        {"sig": 5},
    ],
)
def test_malformed_requests_are_rejected(change: dict[str, object]) -> None:
    agent = make_agent(ORG_A, "alice")
    body = sign_request(agent.seed, org=ORG_A, agent_id="alice", secret="github-token")
    body.update(change)
    with pytest.raises(InvalidInput):
        SecretRequest.from_wire(body)


def test_an_undecodable_signature_is_invalid_input() -> None:
    agent = make_agent(ORG_A, "alice")
    body = sign_request(agent.seed, org=ORG_A, agent_id="alice", secret="github-token")
    body["sig"] = "!!!"
    with pytest.raises(InvalidInput):
        SecretRequest.from_wire(body).signature()
