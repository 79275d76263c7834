"""The tenant-isolated message bus: NATS accounts, credentials, JetStream and the typed API the
control plane uses.

What belongs here: running the embedded nats-server (``server``), minting NATS JWTs and creds
(``jwt``), deciding what each account and user may do (``claims``, ``accounts``), pushing
accounts to a running server (``resolver``), the streams and consumers (``streams``), decoding
what agents report (``events``), answering vault requests with the caller the server vouched
for (``vault_requests``), and :class:`PlatformBus`, the one object the control plane holds.
Every nats-py exception is translated into :mod:`corral.domain.errors` here (``failures``).

What must not: scheduling, persistence of tasks or agents, secrets themselves, and any import
of ``corral.control``, ``corral.api`` or ``corral.cli``. The subject names are not defined here
but in :mod:`corral.domain.subjects`, shared with the agent SDK.
"""

from __future__ import annotations

from corral.bus.accounts import AgentCredentials, BusAuthority, JetStreamCaps, ServerTrust
from corral.bus.events import BusEvent, EventKind
from corral.bus.failures import ViolationRecorder
from corral.bus.platform import PlatformBus, Serving
from corral.bus.server import EmbeddedNats, ServerOptions, find_nats_server
from corral.bus.vault_requests import VaultHandler, VaultRequest

__all__ = [
    "AgentCredentials",
    "BusAuthority",
    "BusEvent",
    "EmbeddedNats",
    "EventKind",
    "JetStreamCaps",
    "PlatformBus",
    "ServerOptions",
    "ServerTrust",
    "Serving",
    "VaultHandler",
    "VaultRequest",
    "ViolationRecorder",
    "find_nats_server",
]
