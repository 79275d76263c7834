"""What each account and user may do: the ``nats`` claims of Corral's JWTs, as pure data.

The shape, hub and spoke:

- each **org account** is its own subject space and JetStream namespace. It exports, to
  PLATFORM only (``token_req`` plus an activation token signed by the org's key; see
  ``private`` below), the stream
  ``org.<org>.agents.>`` and the stream ``platform.agents.status`` (what its agents report),
  and the services ``org.<org>.tasks.*.inbox`` (so the platform's publish into the INBOX stream
  gets its PubAck) and ``org.<org>.agents.*.control``. It imports PLATFORM's broadcast stream
  and the vault service, mapped so that its agents' ``platform.vault.get`` arrives at the
  platform as ``platform.vault.get.<org account key>``; the server enforces that token.
- **PLATFORM** imports those four from every org; ``platform.agents.status`` lands locally
  as ``platform.agents.status.<org>``. Since an org can only export its own subjects, the
  subject the platform receives says which org spoke, whatever the payload claims.
- **users** inside an account only narrow further: an agent may pull from its own consumer,
  publish its own status and events, and read its own control subject and replies.

``private=False`` drops the activation tokens: the exports become public and only the fact that
Corral signs every account JWT keeps other accounts from importing them. The server verifies
every token on every PLATFORM update, so with tokens onboarding a tenant costs about ten times
more once there are a hundred (see benchmarks/bus.py).
"""

from __future__ import annotations

from typing import Any

from corral.domain import subjects
from corral.domain.plans import BusLimits

__all__ = [
    "PLATFORM_STATUS_PREFIX",
    "VAULT_IMPORTED_PREFIX",
    "VAULT_TOKEN_POSITION",
    "account_limits",
    "activation_subjects",
    "agent_permissions",
    "org_exports",
    "org_imports",
    "platform_exports",
    "platform_imports",
    "platform_permissions",
    "platform_status_subject",
    "unlimited",
]

#: where an org's ``platform.agents.status`` lands in PLATFORM: ``platform.agents.status.<org>``
PLATFORM_STATUS_PREFIX = subjects.PLATFORM_STATUS
#: what PLATFORM serves: ``platform.vault.get.<org account public key>``
VAULT_IMPORTED_PREFIX = subjects.VAULT_GET
VAULT_TOKEN_POSITION = 4  # 1-based token of VAULT_IMPORTED_PREFIX + ".*" holding the key


def platform_status_subject(org: str) -> str:
    return f"{PLATFORM_STATUS_PREFIX}.{org}"


def unlimited(*, jetstream_memory: int, jetstream_storage: int) -> dict[str, Any]:
    """Account limits with no caps but the JetStream reservation (SYSTEM, PLATFORM)."""
    return {
        "subs": -1,
        "data": -1,
        "payload": -1,
        "imports": -1,
        "exports": -1,
        "wildcards": True,
        "conn": -1,
        "leaf": 0,
        "mem_storage": jetstream_memory,
        "disk_storage": jetstream_storage,
        "streams": -1 if jetstream_memory or jetstream_storage else 0,
        "consumer": -1 if jetstream_memory or jetstream_storage else 0,
    }


def account_limits(limits: BusLimits) -> dict[str, Any]:
    """An org account's limits, compiled from its plan."""
    return {
        "subs": -1,
        "data": -1,
        "payload": limits.max_payload,
        "imports": -1,
        "exports": -1,
        "wildcards": True,
        "conn": limits.max_connections,
        "leaf": 0,
        "mem_storage": limits.jetstream_memory,
        "disk_storage": limits.jetstream_storage,
        "streams": limits.max_streams,
        "consumer": limits.max_consumers,  # the server counts it per stream
        "max_bytes_required": True,
    }


def _org_export_subjects(org: str) -> list[tuple[str, str, str]]:
    """(name, subject, kind) of everything an org shares with PLATFORM."""
    return [
        ("agents", subjects.org_events_wildcard(org), "stream"),
        ("platform-status", subjects.PLATFORM_STATUS, "stream"),
        ("inbox", subjects.org_inboxes(org), "service"),
        ("control", subjects.agent_control(org, "*"), "service"),
    ]


def org_exports(org: str, *, private: bool = True) -> list[dict[str, Any]]:
    exports: list[dict[str, Any]] = []
    for name, subject, kind in _org_export_subjects(org):
        export: dict[str, Any] = {"name": name, "subject": subject, "type": kind}
        if private:
            export["token_req"] = True
        if kind == "service":
            export["response_type"] = "Singleton"
        exports.append(export)
    return exports


def org_imports(platform_account: str, org_account: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "broadcast",
            "subject": f"{subjects.BROADCAST_PREFIX}.>",
            "account": platform_account,
            "type": "stream",
        },
        {
            "name": "vault",
            "subject": f"{VAULT_IMPORTED_PREFIX}.{org_account}",
            "local_subject": subjects.VAULT_GET,
            "account": platform_account,
            "type": "service",
            "share": True,  # the platform sees the caller's account and user key
        },
    ]


def platform_exports() -> list[dict[str, Any]]:
    return [
        {"name": "broadcast", "subject": f"{subjects.BROADCAST_PREFIX}.>", "type": "stream"},
        {
            "name": "vault",
            "subject": f"{VAULT_IMPORTED_PREFIX}.*",
            "type": "service",
            "response_type": "Singleton",
            "account_token_position": VAULT_TOKEN_POSITION,
        },
    ]


def platform_imports(
    org: str, org_account: str, activations: dict[str, str] | None
) -> list[dict[str, Any]]:
    """PLATFORM's imports of one org; ``activations`` maps each export subject to the
    activation token the org signed for PLATFORM (None: the exports are public)."""
    imports: list[dict[str, Any]] = []
    for name, subject, kind in _org_export_subjects(org):
        entry: dict[str, Any] = {
            "name": f"{org}-{name}",
            "subject": subject,
            "account": org_account,
            "type": kind,
        }
        if activations is not None:
            entry["token"] = activations[subject]
        if subject == subjects.PLATFORM_STATUS:
            entry["local_subject"] = platform_status_subject(org)
        imports.append(entry)
    return imports


def activation_subjects(org: str) -> list[tuple[str, str]]:
    """(subject, kind) pairs PLATFORM needs an activation token for."""
    return [(subject, kind) for _, subject, kind in _org_export_subjects(org)]


def agent_permissions(org: str, agent: str) -> dict[str, Any]:
    """Least privilege for one agent's user JWT."""
    consumer = subjects.inbox_consumer(agent)
    stream = subjects.INBOX_STREAM
    return {
        "pub": {
            "allow": [
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
                f"$JS.ACK.{stream}.{consumer}.>",
                subjects.agent_status(org, agent),
                subjects.agent_events(org, agent),
                subjects.PLATFORM_STATUS,
                subjects.VAULT_GET,
            ]
        },
        "sub": {
            "allow": [
                f"{subjects.agent_inbox_prefix(agent)}.>",
                subjects.agent_control(org, agent),
                f"{subjects.BROADCAST_PREFIX}.>",
            ]
        },
        "resp": {"max": 1, "ttl": 0},
        "allowed_connection_types": ["STANDARD"],
    }


def platform_permissions() -> dict[str, Any]:
    """The control plane's user in PLATFORM: it may deliver, control, broadcast, run its
    own JetStream and answer vault requests, but never publish an agent's status."""
    return {
        "pub": {
            "allow": [
                subjects.org_inboxes("*"),
                subjects.agent_control("*", "*"),
                f"{subjects.BROADCAST_PREFIX}.>",
                "$JS.API.>",
                f"$JS.ACK.{subjects.EVENTS_STREAM}.>",
            ]
        },
        "sub": {"allow": ["_INBOX.>", f"{VAULT_IMPORTED_PREFIX}.*"]},
        "resp": {"max": 1, "ttl": 0},
    }
