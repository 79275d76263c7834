"""What each account and user may do: the ``nats`` claims of Corral's JWTs, as pure data.

The shape: a flat PLATFORM and a fence around each org.

- each **org account** is its own subject space and JetStream namespace, and everything an
  org's agents do stays inside it: tasks arrive in its ``INBOX`` stream, what its agents report
  (``org.<org>.agents.*.status|events`` and the org-local ``platform.agents.status``) is kept
  in its own ``EVENTS`` stream, counted against its own storage, and what is too big for a
  message in its own object store (``OBJECTS``). A flood fills the flooder's
  stream and quota, nobody else's. It **exports nothing**. It imports two things PLATFORM
  exports to every org alike: the broadcast stream, and the vault service mapped so that its
  agents' ``platform.vault.get`` arrives at the platform as
  ``platform.vault.get.<org account key>`` (``account_token_position``: the server enforces
  that token, so the subject names the calling account).
- **PLATFORM imports nothing**: its JWT is the same size for one org or a thousand, so
  onboarding the thousandth org costs what the first did. The control plane reaches into an
  org through a connection of its own in that org's account (:func:`org_link_permissions`):
  it delivers into INBOX, sends control requests and consumes EVENTS there. Since that
  connection is made with the org's key, what it reads is that org's, whatever a payload
  claims.
- **users** inside an account only narrow further: an agent may pull from its own consumer,
  publish its own status and events, and read its own control subject and replies.

Older versions had every org export four subjects to PLATFORM (with activation tokens), and
PLATFORM import them all: ~4 KiB of PLATFORM's JWT per org, over the server's 1 MiB limit at
the 263rd org.
"""

from __future__ import annotations

from typing import Any

from corral.domain import objects, subjects
from corral.domain.plans import BusLimits

__all__ = [
    "PLATFORM_STATUS_PREFIX",
    "VAULT_IMPORTED_PREFIX",
    "VAULT_TOKEN_POSITION",
    "account_limits",
    "agent_permissions",
    "object_permissions",
    "org_imports",
    "org_link_permissions",
    "platform_exports",
    "platform_permissions",
    "platform_status_subject",
    "unlimited",
]

#: how an org's ``platform.agents.status`` is named once read: ``platform.agents.status.<org>``
#: (the org is the account the control plane read it from)
PLATFORM_STATUS_PREFIX = subjects.PLATFORM_STATUS
#: what PLATFORM serves: ``platform.vault.get.<org account public key>``
VAULT_IMPORTED_PREFIX = subjects.VAULT_GET
VAULT_TOKEN_POSITION = 4  # 1-based token of VAULT_IMPORTED_PREFIX + ".*" holding the key


def platform_status_subject(org: str) -> str:
    return f"{PLATFORM_STATUS_PREFIX}.{org}"


def unlimited(
    *, jetstream_memory: int, jetstream_storage: int, streams: int = -1
) -> dict[str, Any]:
    """Account limits with no caps but the JetStream reservation (SYSTEM, PLATFORM); a
    negative storage is JetStream without a reservation."""
    jetstream = bool(jetstream_memory or jetstream_storage)
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
        "streams": streams if jetstream else 0,
        "consumer": -1 if jetstream else 0,
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
                *object_permissions(),
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


def object_permissions() -> list[str]:
    """What an agent may publish to use its org's object store (see
    :mod:`corral.sdk.objects`): write chunks and metadata, and read them with direct gets.
    Nothing else of the stream's API: an agent cannot purge, delete or reconfigure it. The
    store is in the org's own account, so these subjects reach no other org's."""
    return [
        f"$O.{objects.BUCKET}.C.>",
        f"$O.{objects.BUCKET}.M.>",
        f"$JS.API.DIRECT.GET.{objects.STREAM}",
        f"$JS.API.DIRECT.GET.{objects.STREAM}.>",
    ]


def platform_permissions() -> dict[str, Any]:
    """The control plane's user in PLATFORM: it may broadcast, answer vault requests and
    drain the EVENTS stream an earlier version kept there, but never publish an agent's
    status."""
    return {
        "pub": {
            "allow": [
                f"{subjects.BROADCAST_PREFIX}.>",
                "$JS.API.>",
                f"$JS.ACK.{subjects.EVENTS_STREAM}.>",
            ]
        },
        "sub": {"allow": ["_INBOX.>", f"{VAULT_IMPORTED_PREFIX}.*"]},
        "resp": {"max": 1, "ttl": 0},
    }


def org_link_permissions(org: str) -> dict[str, Any]:
    """The control plane's user inside one org's account: deliver tasks, send control
    requests, manage and consume the org's streams; it cannot speak as an agent (publish a
    status or an event)."""
    return {
        "pub": {
            "allow": [
                subjects.org_inboxes(org),
                subjects.agent_control(org, "*"),
                f"$O.{objects.BUCKET}.>",
                "$JS.API.>",
                f"$JS.ACK.{subjects.EVENTS_STREAM}.>",
            ]
        },
        "sub": {"allow": ["_INBOX.>"]},
    }
