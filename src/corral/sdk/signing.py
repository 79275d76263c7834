"""Signing an agent's secret request with its own NATS user nkey.

The agent's creds file holds its user seed; the request is signed over the canonical bytes
defined in ``corral.domain.agent_auth`` and carries the public key and the base64url
signature. The platform verifies it against the key it recorded for the agent.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import nkeys

from corral.domain.agent_auth import SecretRequest, b64url_encode, canonical_payload
from corral.domain.errors import InvalidInput

__all__ = ["seed_from_creds", "sign_request", "signed_request"]

_SEED_BLOCK = re.compile(r"-{3,}BEGIN USER NKEY SEED-{3,}\s*(S[A-Z2-7]+)\s*-{3,}END")


def seed_from_creds(creds: str) -> bytes:
    """The user nkey seed inside a NATS creds file's text.

    Raises:
        InvalidInput: the text holds no user seed block.
    """
    match = _SEED_BLOCK.search(creds)
    if match is None:
        raise InvalidInput("the creds file holds no USER NKEY SEED block")
    return match.group(1).encode("ascii")


def signed_request(
    seed: bytes,
    *,
    org: str,
    agent_id: str,
    secret: str,
    ts: int | None = None,
    nonce: str | None = None,
) -> SecretRequest:
    """A :class:`SecretRequest` for ``secret``, signed with the agent's user seed.

    Args:
        seed: the agent's NATS user nkey seed (``SU...``).
        org: the agent's organization (id or slug).
        agent_id: the agent's id.
        secret: the secret's name.
        ts: unix seconds; now by default.
        nonce: lower-case hex; 128 random bits by default.

    Raises:
        InvalidInput: the seed is not an nkey seed.
    """
    try:
        keys = nkeys.from_seed(bytes(seed))
    except (nkeys.NkeysError, ValueError, TypeError) as exc:
        raise InvalidInput("not a NATS user nkey seed") from exc
    try:
        ts = int(time.time()) if ts is None else ts
        nonce = secrets.token_hex(16) if nonce is None else nonce
        payload = canonical_payload(org=org, agent_id=agent_id, secret=secret, nonce=nonce, ts=ts)
        return SecretRequest(
            org=org,
            agent_id=agent_id,
            secret=secret,
            nonce=nonce,
            ts=ts,
            public_key=bytes(keys.public_key).decode("ascii"),
            sig=b64url_encode(bytes(keys.sign(payload))),
        )
    finally:
        keys.wipe()


def sign_request(
    seed: bytes | None = None,
    *,
    creds: str | None = None,
    org: str,
    agent_id: str,
    secret: str,
    ts: int | None = None,
    nonce: str | None = None,
) -> dict[str, Any]:
    """The wire form (JSON object) of a signed secret request.

    Give the seed itself or the creds file's text (``creds``), not both.

    Raises:
        InvalidInput: neither or both of ``seed`` and ``creds``, or no seed in them.
    """
    if (seed is None) == (creds is None):
        raise InvalidInput("give either the nkey seed or the creds file text")
    if seed is None:
        assert creds is not None
        seed = seed_from_creds(creds)
    request = signed_request(seed, org=org, agent_id=agent_id, secret=secret, ts=ts, nonce=nonce)
    return request.to_wire()
