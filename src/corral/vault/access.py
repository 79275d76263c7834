"""Agent authentication for secret reads: who is asking, proven, before the vault answers.

An agent signs each request with its own NATS user nkey (see ``corral.domain.agent_auth``).
Here the platform checks, in order, and denies — audited, with the reason — at the first
failure:

1. the request is well-formed;
2. it names the org the *server* says it came from (the NATS account that carried it, or
   the API key's org) — the org in the payload is only checked, never trusted;
3. its timestamp is within the window (60 s by default);
4. the agent is one the platform recorded in that org, and the request carries the public
   key recorded for it;
5. the ed25519 signature verifies under that recorded key;
6. its nonce was not seen within the window (replay).

Then the vault applies grants to the agent *as recorded* (its role comes from the platform).
The nonce cache is per process; run one verifier per store, or give each replica its own
agents (queue group by org) so that a replay cannot reach a replica that never saw it.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import time
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from typing import Any, NoReturn

import nkeys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from corral.domain.agent_auth import (
    REQUEST_WINDOW_SECONDS,
    AgentIdentity,
    RegisteredAgent,
    SecretRequest,
)
from corral.domain.errors import InvalidInput, PermissionDenied
from corral.domain.ids import AgentId, OrgId
from corral.domain.secrets import AuditAction
from corral.vault.service import Vault

__all__ = ["AgentLookup", "NonceCache", "NonceVerdict", "SecretAccess", "user_public_key"]

AgentLookup = Callable[[OrgId, AgentId], Awaitable[RegisteredAgent | None]]
"""``(org_id, agent_id) -> RegisteredAgent | None``: the platform's record of a live agent of
that org (None for unknown, terminated or another org's agents)."""

_USER_KEY_BYTES = 35  # prefix + 32-byte ed25519 key + crc16


def user_public_key(encoded: str) -> Ed25519PublicKey | None:
    """The ed25519 key inside a NATS user public key (``U...``), or None if it is not one."""
    try:
        raw = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != _USER_KEY_BYTES or raw[0] != nkeys.PREFIX_BYTE_USER:
        return None
    if bytes(nkeys.crc16_checksum(raw[:-2])) != raw[-2:]:
        return None
    return Ed25519PublicKey.from_public_bytes(raw[1:33])


class NonceVerdict(StrEnum):
    FRESH = "fresh"
    REPLAYED = "replayed"
    FULL = "full"


class NonceCache:
    """Nonces seen within the window, per agent key, each kept until its request expires.

    Bounded per agent, so that one agent flooding requests is refused alone.
    """

    def __init__(self, *, per_agent: int = 1000) -> None:
        self._per_agent = per_agent
        self._seen: dict[str, dict[str, float]] = {}
        self._expiry: list[tuple[float, str, str]] = []

    def __len__(self) -> int:
        return sum(len(v) for v in self._seen.values())

    def admit(self, principal: str, nonce: str, *, expires_at: float, now: float) -> NonceVerdict:
        self._prune(now)
        seen = self._seen.setdefault(principal, {})
        if nonce in seen:
            return NonceVerdict.REPLAYED
        if len(seen) >= self._per_agent:
            return NonceVerdict.FULL
        seen[nonce] = expires_at
        heapq.heappush(self._expiry, (expires_at, principal, nonce))
        return NonceVerdict.FRESH

    def _prune(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            _, principal, nonce = heapq.heappop(self._expiry)
            seen = self._seen.get(principal)
            if seen is not None:
                seen.pop(nonce, None)
                if not seen:
                    del self._seen[principal]


class SecretAccess:
    """Verifies agents' signed secret requests and hands the verified ones to the vault."""

    def __init__(
        self,
        vault: Vault,
        lookup: AgentLookup,
        *,
        clock: Callable[[], float] = time.time,
        window: float = REQUEST_WINDOW_SECONDS,
        nonces: NonceCache | None = None,
    ) -> None:
        self._vault = vault
        self._lookup = lookup
        self._clock = clock
        self._window = window
        self._nonces = NonceCache() if nonces is None else nonces

    async def read(
        self,
        request: SecretRequest | Mapping[str, Any],
        *,
        org_id: OrgId,
        org_slug: str | None = None,
    ) -> bytes:
        """The secret an agent asked for, once its request is verified and a grant covers it.

        Args:
            request: the signed request, parsed or as decoded JSON.
            org_id: the org the server says the request came from (never the payload's).
            org_slug: that org's slug, if agents may name their org by slug.

        Raises:
            PermissionDenied: any verification or grant check failed (audited with reason).
            NotFound: granted, but no such secret.
            Unavailable: the secret does not decrypt, or a dependency is down.
        """
        verified, agent = await self.authenticate(request, org_id=org_id, org_slug=org_slug)
        return await self._vault.read_for_agent(org_id, agent, verified.secret)

    async def authenticate(
        self,
        request: SecretRequest | Mapping[str, Any],
        *,
        org_id: OrgId,
        org_slug: str | None = None,
    ) -> tuple[SecretRequest, AgentIdentity]:
        """Verify a request; return it with the agent as the platform recorded it.

        Raises:
            PermissionDenied: the request fails a check; the denial is audited in ``org_id``.
        """
        if isinstance(request, SecretRequest):
            req = request
        else:
            try:
                req = SecretRequest.from_wire(request)
            except InvalidInput as exc:
                await self._deny(org_id, request, f"malformed request: {exc.message}")
        if req.org not in {org_id, org_slug}:
            await self._deny(org_id, req, "the request names another organization")
        now = self._clock()
        if abs(now - req.ts) > self._window:
            await self._deny(
                org_id, req, f"timestamp outside the {self._window:g} s window (clock skew?)"
            )
        registered = await self._lookup(org_id, AgentId(req.agent_id))
        if (
            registered is None
            or registered.identity.org_id != org_id
            or registered.identity.agent_id != req.agent_id
        ):
            await self._deny(org_id, req, "no such agent in this organization")
        if req.public_key != registered.public_key:
            await self._deny(org_id, req, "public key is not the one recorded for this agent")
        key = user_public_key(registered.public_key)
        if key is None:
            await self._deny(org_id, req, "the agent's recorded public key is not a user nkey")
        try:
            key.verify(req.signature(), req.signed_payload())
        except (InvalidSignature, InvalidInput):
            await self._deny(org_id, req, "bad signature")
        verdict = self._nonces.admit(
            registered.public_key, req.nonce, expires_at=req.ts + self._window, now=now
        )
        if verdict is NonceVerdict.REPLAYED:
            await self._deny(org_id, req, "replayed request (nonce already seen)")
        if verdict is NonceVerdict.FULL:
            await self._deny(org_id, req, "too many requests within the window")
        return req, registered.identity

    async def _deny(
        self, org_id: OrgId, request: SecretRequest | Mapping[str, Any], reason: str
    ) -> NoReturn:
        if isinstance(request, SecretRequest):
            claimed_agent, claimed_secret = request.agent_id, request.secret
        else:
            fields = request if isinstance(request, Mapping) else {}
            agent_value, secret_value = fields.get("agentId"), fields.get("secret")
            claimed_agent = agent_value if isinstance(agent_value, str) else "?"
            claimed_secret = secret_value if isinstance(secret_value, str) else "?"
        await self._vault.audit.record(
            org_id,
            actor=f"unverified-agent:{claimed_agent}",
            action=AuditAction.SECRET_READ,
            target=claimed_secret,
            allowed=False,
            detail=f"denied: {reason}",
        )
        raise PermissionDenied(f"secret request denied: {reason}", details={"reason": reason})
