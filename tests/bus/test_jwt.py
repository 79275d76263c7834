"""NATS JWTs minted by hand: signed by their issuer, readable, refused when tampered with."""

from __future__ import annotations

import base64
import json

import pytest

from corral.bus import jwt
from corral.bus.jwt import KeyKind, NKey
from corral.domain.errors import InvalidInput


def test_keys_carry_their_role_in_the_prefix_and_round_trip_through_the_seed() -> None:
    for kind, prefix in ((KeyKind.OPERATOR, "O"), (KeyKind.ACCOUNT, "A"), (KeyKind.USER, "U")):
        key = NKey.generate(kind)
        assert key.public_key.startswith(prefix) and key.seed.startswith("S" + prefix)
        assert NKey.from_seed(key.seed).public_key == key.public_key
        assert key.seed not in repr(key)
    with pytest.raises(InvalidInput):
        NKey.from_seed("SUNOTASEED")


def test_a_minted_jwt_has_the_nats_header_and_claims_and_verifies() -> None:
    account, user = NKey.generate(KeyKind.ACCOUNT), NKey.generate(KeyKind.USER)
    token = jwt.encode_claims(
        account, subject=user.public_key, name="a1", nats={"type": "user"}, expires_at=2_000_000_000
    )
    head = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert head == {"typ": "JWT", "alg": "ed25519-nkey"}
    claims = jwt.decode(token)
    assert claims["iss"] == account.public_key and claims["sub"] == user.public_key
    assert claims["name"] == "a1" and claims["exp"] == 2_000_000_000
    assert claims["nats"] == {"type": "user", "version": 2}
    assert len(claims["jti"]) == 52 and isinstance(claims["iat"], int)


def test_a_tampered_or_foreign_jwt_is_refused() -> None:
    account, user = NKey.generate(KeyKind.ACCOUNT), NKey.generate(KeyKind.USER)
    token = jwt.encode_claims(account, subject=user.public_key, name="a1", nats={"type": "user"})
    head, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["name"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidInput, match="signature"):
        jwt.decode(f"{head}.{forged}.{signature}")
    with pytest.raises(InvalidInput):
        jwt.decode("not.a-jwt")


def test_creds_text_holds_the_jwt_and_the_seed_each_on_the_line_after_its_banner() -> None:
    user = NKey.generate(KeyKind.USER)
    text = jwt.creds("HEAD.BODY.SIG", user)
    lines = text.splitlines()
    assert lines[lines.index("-----BEGIN NATS USER JWT-----") + 1] == "HEAD.BODY.SIG"
    assert lines[lines.index("-----BEGIN USER NKEY SEED-----") + 1] == user.seed
    assert "------END NATS USER JWT------" in lines and "------END USER NKEY SEED------" in lines
