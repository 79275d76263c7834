"""NATS JWTs and nkeys, minted by hand.

A NATS JWT is ``base64url(header).base64url(claims).base64url(signature)`` with the header
``{"typ":"JWT","alg":"ed25519-nkey"}`` and an ed25519 signature by the issuer's nkey over the
first two parts. The chain of trust is operator → account → user: the server trusts the
operator, the operator signs account JWTs, an account signs its users' JWTs. Only the
structure the server reads is built here; what goes into the claims is decided by
:mod:`corral.bus.accounts`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import nkeys

from corral.domain.errors import InvalidInput

__all__ = [
    "Claims",
    "KeyKind",
    "NKey",
    "creds",
    "decode",
    "encode",
    "encode_claims",
]

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}

Claims = dict[str, Any]


class KeyKind(StrEnum):
    OPERATOR = "operator"
    ACCOUNT = "account"
    USER = "user"


_PREFIX = {
    KeyKind.OPERATOR: nkeys.PREFIX_BYTE_OPERATOR,
    KeyKind.ACCOUNT: nkeys.PREFIX_BYTE_ACCOUNT,
    KeyKind.USER: nkeys.PREFIX_BYTE_USER,
}


@dataclass(frozen=True, slots=True)
class NKey:
    """An nkey pair, held by its seed (``SO…``, ``SA…``, ``SU…``).

    The pair is derived from the seed once, when first used: deriving it (an ed25519 key from
    the seed) cost each JWT signed and each public key asked for as much as signing itself,
    several times per org created; and a start that loads every org's key derives none.
    """

    seed: str
    _pair: nkeys.KeyPair | None = field(default=None, init=False, repr=False, compare=False)
    _public: str = field(default="", init=False, repr=False, compare=False)

    def _derived(self) -> nkeys.KeyPair:
        pair = self._pair
        if pair is None:
            pair = nkeys.from_seed(self.seed.encode())
            object.__setattr__(self, "_public", str(pair.public_key.decode()))
            object.__setattr__(self, "_pair", pair)
        return pair

    @classmethod
    def generate(cls, kind: KeyKind) -> NKey:
        raw = nkeys.encode_seed(os.urandom(32), _PREFIX[kind])
        return cls(raw.decode())

    @classmethod
    def from_seed(cls, seed: str) -> NKey:
        key = cls(seed.strip())
        try:
            nkeys.decode_seed(key.seed.encode())  # its form, without deriving the pair
        except nkeys.NkeysError as exc:
            raise InvalidInput(f"not an nkey seed: {exc}") from exc
        return key

    @property
    def public_key(self) -> str:
        self._derived()
        return self._public

    def sign(self, data: bytes) -> bytes:
        return bytes(self._derived().sign(data))

    def __repr__(self) -> str:  # never print a seed
        return f"NKey({self.public_key})"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _jti(claims: Claims) -> str:
    digest = hashlib.new("sha512_256", json.dumps(claims, sort_keys=True).encode()).digest()
    return base64.b32encode(digest).rstrip(b"=").decode()


def encode_claims(
    signer: NKey,
    *,
    subject: str,
    name: str,
    nats: dict[str, Any],
    expires_at: int | None = None,
    issued_at: int | None = None,
) -> str:
    """Sign the claims ``{iss, sub, name, iat, exp?, jti, nats}`` with ``signer``.

    ``nats`` carries the kind-specific claims including ``type``; ``version: 2`` is added.
    ``iat`` defaults to now; a later update of the same subject must carry a later-or-equal
    ``iat`` for the server to accept it, so callers that re-issue pass it explicitly.
    """
    claims: Claims = {
        "iat": int(time.time()) if issued_at is None else issued_at,
        "iss": signer.public_key,
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    if expires_at is not None:
        claims["exp"] = expires_at
    claims["jti"] = _jti(claims)
    return encode(claims, signer)


def encode(claims: Claims, signer: NKey) -> str:
    head = _b64(json.dumps(_HEADER, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = signer.sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{_b64(signature)}"


def decode(token: str, *, verify: bool = True) -> Claims:
    """The claims of ``token``; with ``verify``, check the issuer's signature first.

    Raises:
        InvalidInput: not a JWT, or the signature does not match ``iss``.
    """
    try:
        head, body, signature = token.strip().split(".")
        claims = json.loads(_unb64(body))
        if not isinstance(claims, dict):
            raise ValueError("claims are not an object")
        if verify:
            issuer = nkeys.KeyPair(public_key=str(claims["iss"]).encode())
            _verify(issuer, f"{head}.{body}".encode(), _unb64(signature))
    except (ValueError, KeyError, nkeys.NkeysError) as exc:
        raise InvalidInput(f"not a valid NATS JWT: {exc or type(exc).__name__}") from exc
    return claims


def _verify(issuer: nkeys.KeyPair, data: bytes, signature: bytes) -> None:
    import nacl.exceptions
    import nacl.signing

    raw = base64.b32decode(issuer.public_key + b"=" * (-len(issuer.public_key) % 8))
    try:
        nacl.signing.VerifyKey(raw[1:-2]).verify(data, signature)
    except nacl.exceptions.BadSignatureError as exc:
        raise ValueError("bad signature") from exc


def creds(user_jwt: str, user_key: NKey) -> str:
    """The ``.creds`` text nats clients read: the user JWT and its seed in armoured blocks.

    nats-py takes it in memory as ``nats.aio.client.RawCredentials(text)`` (a plain ``str`` is
    read as a file path); it reads the line after each BEGIN line, so both stay on one line.
    """
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_key.seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )
