"""How an agent proves who it is when it asks the vault for a secret.

An agent signs each request with its own NATS user nkey (ed25519; the seed is in its creds
file). The signed bytes are the canonical JSON of ``org``, ``agentId``, ``secret``, ``nonce``
and ``ts`` — sorted keys, no spaces — and the request carries the agent's ``publicKey`` and
the ``sig`` (base64url, no padding). The platform checks the signature against the key *it*
recorded for the agent, the org against the one the *server* says the request came from, the
timestamp against a window and the nonce against replays (see ``corral.vault.access``).

Pure: the signing itself lives in ``corral.sdk.signing``, the verification in the vault.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.domain.errors import InvalidInput
from corral.domain.ids import AgentId, OrgId

__all__ = [
    "REQUEST_WINDOW_SECONDS",
    "AgentIdentity",
    "RegisteredAgent",
    "SecretRequest",
    "b64url_decode",
    "b64url_encode",
    "canonical_payload",
]

REQUEST_WINDOW_SECONDS = 60
_B64URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")
_NONCE = re.compile(r"^[0-9a-f]{16,128}$")
_MAX_FIELD = {"org": 64, "agentId": 128, "secret": 253, "publicKey": 64, "sig": 128}


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """An authenticated agent, as the platform knows it (never as the agent claims it)."""

    agent_id: AgentId
    role: str
    org_id: OrgId


@dataclass(frozen=True, slots=True)
class RegisteredAgent:
    """What the platform recorded for an agent: who it is and its NATS user public key."""

    identity: AgentIdentity
    public_key: str  # "U..." — the nkey-encoded ed25519 public key


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding.

    Raises:
        InvalidInput: the text is not base64url.
    """
    if not _B64URL.fullmatch(text):
        raise InvalidInput("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("not base64url") from exc


def canonical_payload(*, org: str, agent_id: str, secret: str, nonce: str, ts: int) -> bytes:
    """The exact bytes an agent signs: sorted-key JSON without whitespace, ASCII only."""
    body = {"agentId": agent_id, "nonce": nonce, "org": org, "secret": secret, "ts": ts}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True, slots=True)
class SecretRequest:
    """An agent's signed request for one secret, as it travels on the wire."""

    org: str
    agent_id: str
    secret: str
    nonce: str
    ts: int
    public_key: str
    sig: str

    def signed_payload(self) -> bytes:
        return canonical_payload(
            org=self.org, agent_id=self.agent_id, secret=self.secret, nonce=self.nonce, ts=self.ts
        )

    def signature(self) -> bytes:
        """The raw signature bytes.

        Raises:
            InvalidInput: ``sig`` is not base64url.
        """
        return b64url_decode(self.sig)

    def to_wire(self) -> dict[str, Any]:
        return {
            "org": self.org,
            "agentId": self.agent_id,
            "secret": self.secret,
            "nonce": self.nonce,
            "ts": self.ts,
            "publicKey": self.public_key,
            "sig": self.sig,
        }

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> SecretRequest:
        """Read a request; reject anything malformed rather than pass half-read data inward.

        Raises:
            InvalidInput: a field is missing, of the wrong type or too long.
        """
        if not isinstance(obj, Mapping):
            raise InvalidInput("secret request must be a JSON object")
        values: dict[str, str] = {}
        for key, limit in _MAX_FIELD.items():
            value = obj.get(key)
            if not isinstance(value, str) or not value or len(value) > limit:
                raise InvalidInput(
                    f"secret request field {key!r} must be a non-empty string of at most "
                    f"{limit} characters",
                    details={"field": key},
                )
            values[key] = value
        nonce = obj.get("nonce")
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            raise InvalidInput(
                "secret request field 'nonce' must be 16 to 128 lower-case hex digits",
                details={"field": "nonce"},
            )
        ts = obj.get("ts")
        if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
            raise InvalidInput(
                "secret request field 'ts' must be unix seconds (an integer)",
                details={"field": "ts"},
            )
        return cls(
            org=values["org"],
            agent_id=values["agentId"],
            secret=values["secret"],
            nonce=nonce,
            ts=ts,
            public_key=values["publicKey"],
            sig=values["sig"],
        )
