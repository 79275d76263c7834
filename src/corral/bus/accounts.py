"""The bus authority: who may speak on the bus, and how much JetStream each tenant reserves.

It keeps the operator, SYSTEM and PLATFORM keys and one account key per organization in a
:class:`~corral.bus.keystore.KeyStore` (created on first start and reused after), builds every
account JWT from that state, mints user credentials and records revocations. It does no network I/O:
:class:`corral.bus.platform.PlatformBus` pushes what it builds to the server.

No JWT grows with the number of tenants: PLATFORM imports nothing from the orgs (see
:mod:`corral.bus.claims`), so adding an org signs and pushes that org's account alone.

Admission follows the server's own rule: every account's JetStream reservation (memory and
file storage) is summed against the server's caps, and a tenant that would push the sum over
them is refused here, before the server silently gives it no JetStream. PLATFORM reserves
nothing: its JetStream exists only to drain the EVENTS stream an earlier version kept there,
without a reservation.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corral.bus import claims
from corral.bus import jwt as nats_jwt
from corral.bus.jwt import KeyKind, NKey
from corral.bus.keystore import KeyStore, OrgRecord
from corral.domain import subjects
from corral.domain.errors import Conflict, InvalidInput, NotFound
from corral.domain.plans import BusLimits

__all__ = [
    "AgentCredentials",
    "BusAuthority",
    "JetStreamCaps",
    "ServerTrust",
    "validate_token",
]

_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_MiB = 1024 * 1024


def validate_token(value: str, *, what: str) -> str:
    """Check that ``value`` can stand as one subject token and one JetStream name.

    Raises:
        InvalidInput: it is empty, too long, or holds anything but letters, digits, ``-``, ``_``.
    """
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise InvalidInput(
            f"{what} {value!r} cannot name a bus subject: use letters, digits, '-' and '_'",
            details={what: value},
        )
    return value


@dataclass(frozen=True, slots=True)
class JetStreamCaps:
    """The server's JetStream caps (``max_memory_store``, ``max_file_store``), in bytes."""

    memory: int
    storage: int


@dataclass(frozen=True, slots=True)
class ServerTrust:
    """What a server must be configured with to trust this authority."""

    operator_jwt: str
    system_account: str
    system_account_jwt: str


@dataclass(frozen=True, slots=True)
class AgentCredentials:
    """One agent's NATS user credentials. ``creds`` is the secret ``.creds`` text."""

    org: str
    agent_id: str
    public_key: str
    expires_at: datetime
    inbox_prefix: str  # connect with nats-py ``inbox_prefix=`` or every reply is refused
    creds: str = field(repr=False)


def _mib(n: int) -> str:
    return f"{n / _MiB:g} MiB"


class BusAuthority:
    """Keys, account JWTs and user credentials for one operator.

    Args:
        directory: where keys and org records live (created 0700).
        caps: the server's JetStream caps; ``None`` skips the admission check (a server
            whose caps Corral does not know).
        operator_seed / system_seed: existing keys of an external NATS deployment; by default
            they are generated on first start and kept in ``directory``.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        caps: JetStreamCaps | None,
        operator_seed: str | None = None,
        system_seed: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.caps = caps
        self._store = KeyStore(self.directory)
        self._operator = self._store.key("operator", KeyKind.OPERATOR, operator_seed)
        self._system = self._store.key("system", KeyKind.ACCOUNT, system_seed)
        self._platform = self._store.key("platform", KeyKind.ACCOUNT)
        self._orgs = self._store.load_orgs()
        self._platform_issued_at = 0
        self._by_account: dict[str, str] | None = None  # account → org, made when first asked
        # every org's reservation summed, kept as orgs are admitted and forgotten: admitting
        # one does not add up all the others
        self._memory = sum(r.limits.jetstream_memory for r in self._orgs.values())
        self._storage = sum(r.limits.jetstream_storage for r in self._orgs.values())

    def _save(self, org: str) -> None:
        self._store.save_org(org, self._orgs[org])

    def _org(self, org: str) -> OrgRecord:
        try:
            return self._orgs[org]
        except KeyError:
            raise NotFound(
                f"organization {org!r} has no bus account", details={"org": org}
            ) from None

    # ---- identities ---------------------------------------------------------------------

    @property
    def operator_public_key(self) -> str:
        return self._operator.public_key

    @property
    def system_account(self) -> str:
        return self._system.public_key

    @property
    def platform_account(self) -> str:
        return self._platform.public_key

    def orgs(self) -> list[str]:
        return sorted(self._orgs)

    def limits(self, org: str) -> BusLimits | None:
        record = self._orgs.get(org)
        return None if record is None else record.limits

    def org_account(self, org: str) -> str:
        return self._org(org).account.public_key

    def org_for_account(self, account: str) -> str | None:
        if self._by_account is None:  # not at start: it derives every org's public key
            self._by_account = {r.account.public_key: o for o, r in self._orgs.items()}
        return self._by_account.get(account)

    def agent_for_user(self, org: str, user: str) -> str | None:
        """The agent a user key was minted for, if it was minted for an agent of ``org``."""
        record = self._orgs.get(org)
        entry = None if record is None else record.users.get(user)
        return None if entry is None else str(entry["agent"])

    # ---- admission ----------------------------------------------------------------------

    def reserved(self, *, excluding: str | None = None) -> tuple[int, int]:
        """(memory, storage) reserved by every org but ``excluding`` (PLATFORM reserves
        nothing)."""
        memory, storage = self._memory, self._storage
        record = None if excluding is None else self._orgs.get(excluding)
        if record is not None:
            memory -= record.limits.jetstream_memory
            storage -= record.limits.jetstream_storage
        return memory, storage

    def admit(self, org: str, limits: BusLimits, *, save: bool = True) -> bool:
        """Record ``org`` with ``limits`` (new, or a plan change). True if anything changed.
        Without ``save`` the record is kept in memory only: the caller saves it next (with
        :meth:`org_account_jwt`).

        Raises:
            InvalidInput: the limits contradict themselves.
            Conflict: its JetStream reservation would push the sum over the server's caps.
        """
        validate_token(org, what="org")
        streams = limits.inbox_max_bytes + limits.events_max_bytes + limits.objects_max_bytes
        if limits.inbox_max_bytes <= 0 or limits.events_max_bytes <= 0:
            raise InvalidInput(
                f"the INBOX and EVENTS of {org!r} need a positive size", details={"org": org}
            )
        if limits.ingress_bytes_per_second <= 0 or limits.ingress_msgs_per_second <= 0:
            raise InvalidInput(
                f"the ingress budget of {org!r} must be positive", details={"org": org}
            )
        if streams > limits.jetstream_storage or limits.objects_max_bytes < 0:
            raise InvalidInput(
                f"the INBOX ({_mib(limits.inbox_max_bytes)}), EVENTS "
                f"({_mib(limits.events_max_bytes)}) and OBJECTS "
                f"({_mib(limits.objects_max_bytes)}) of {org!r} cannot exceed its JetStream "
                f"storage ({_mib(limits.jetstream_storage)})",
                details={"org": org},
            )
        record = self._orgs.get(org)
        if record is not None and record.limits == limits:
            return False
        if self.caps is not None:
            memory, storage = self.reserved(excluding=org)
            mem_total = memory + limits.jetstream_memory
            disk_total = storage + limits.jetstream_storage
            if mem_total > self.caps.memory or disk_total > self.caps.storage:
                raise Conflict(
                    f"cannot admit organization {org!r} to the bus: it reserves "
                    f"{_mib(limits.jetstream_memory)} JetStream memory and "
                    f"{_mib(limits.jetstream_storage)} storage, {_mib(memory)} of "
                    f"{_mib(self.caps.memory)} memory and {_mib(storage)} of "
                    f"{_mib(self.caps.storage)} storage are already reserved",
                    details={
                        "org": org,
                        "memory": limits.jetstream_memory,
                        "storage": limits.jetstream_storage,
                        "reserved_memory": memory,
                        "reserved_storage": storage,
                        "max_memory": self.caps.memory,
                        "max_storage": self.caps.storage,
                    },
                )
        if record is None:
            record = self._orgs[org] = OrgRecord(
                account=NKey.generate(KeyKind.ACCOUNT), limits=limits
            )
            if self._by_account is not None:
                self._by_account[record.account.public_key] = org
        else:
            self._memory -= record.limits.jetstream_memory
            self._storage -= record.limits.jetstream_storage
            record.limits = limits
        self._memory += limits.jetstream_memory
        self._storage += limits.jetstream_storage
        if save:
            self._save(org)
        return True

    def forget(self, org: str) -> None:
        """Drop ``org``'s record and key; its reservation is free again."""
        record = self._orgs.pop(org, None)
        if record is not None and self._by_account is not None:
            self._by_account.pop(record.account.public_key, None)
        if record is not None:
            self._memory -= record.limits.jetstream_memory
            self._storage -= record.limits.jetstream_storage
        self._store.delete_org(org)

    # ---- account JWTs -------------------------------------------------------------------

    def trust(self) -> ServerTrust:
        return ServerTrust(self.operator_jwt(), self.system_account, self.system_account_jwt())

    def operator_jwt(self) -> str:
        return nats_jwt.encode_claims(
            self._operator,
            subject=self._operator.public_key,
            name="corral",
            nats={"type": "operator", "system_account": self._system.public_key},
            issued_at=0,
        )

    def system_account_jwt(self) -> str:
        nats = {
            "type": "account",
            "limits": claims.unlimited(jetstream_memory=0, jetstream_storage=0),
        }
        return self._account_jwt(self._system, "SYSTEM", nats, issued_at=0)

    def platform_account_jwt(self, *, legacy_events: bool = False) -> str:
        """PLATFORM's account JWT: the constant exports every org imports, no import, no
        JetStream; with ``legacy_events``, JetStream without a reservation and for one stream,
        so that an earlier version's EVENTS can be drained and deleted."""
        self._platform_issued_at = max(int(time.time()), self._platform_issued_at)
        nats = {
            "type": "account",
            "limits": claims.unlimited(
                jetstream_memory=0,
                jetstream_storage=-1 if legacy_events else 0,
                streams=1,
            ),
            "exports": claims.platform_exports(),
        }
        return self._account_jwt(self._platform, "PLATFORM", nats, self._platform_issued_at)

    def org_account_jwt(self, org: str, *, disabled: bool = False) -> str:
        """The org's account JWT; ``disabled`` revokes every user and reserves nothing."""
        record = self._org(org)
        now = int(time.time())
        record.issued_at = max(now, record.issued_at)
        self._prune(record, now)
        limits = claims.account_limits(record.limits)
        revocations = dict(record.revocations)
        if disabled:
            limits.update(conn=0, mem_storage=0, disk_storage=0, streams=0, consumer=0)
            revocations["*"] = record.issued_at
        nats: dict[str, Any] = {
            "type": "account",
            "limits": limits,
            "imports": claims.org_imports(self._platform.public_key, record.account.public_key),
        }
        if revocations:
            nats["revocations"] = revocations
        self._save(org)
        return self._account_jwt(record.account, org, nats, record.issued_at)

    def _account_jwt(self, key: NKey, name: str, nats: dict[str, Any], issued_at: int) -> str:
        return nats_jwt.encode_claims(
            self._operator, subject=key.public_key, name=name, nats=nats, issued_at=issued_at
        )

    def delete_request(self, accounts: list[str]) -> str:
        """The operator-signed request ``$SYS.REQ.CLAIMS.DELETE`` takes (needs the resolver's
        ``allow_delete``)."""
        return nats_jwt.encode_claims(
            self._operator,
            subject=self._operator.public_key,
            name="delete accounts",
            nats={"accounts": accounts},
        )

    @staticmethod
    def _prune(record: OrgRecord, now: int) -> None:
        """Forget users whose JWT has expired: a revocation of them no longer matters."""
        expired = [key for key, user in record.users.items() if int(user["expires"]) < now]
        for key in expired:
            del record.users[key]
            record.revocations.pop(key, None)

    # ---- users --------------------------------------------------------------------------

    def _user_creds(
        self, signer: NKey, name: str, nats: dict[str, Any], expires_at: int | None
    ) -> tuple[str, NKey]:
        user = NKey.generate(KeyKind.USER)
        claims_ = {"type": "user", "subs": -1, "data": -1, "payload": -1, **nats}
        token = nats_jwt.encode_claims(
            signer, subject=user.public_key, name=name, nats=claims_, expires_at=expires_at
        )
        return nats_jwt.creds(token, user), user

    def mint_agent_creds(self, org: str, agent_id: str, *, ttl_seconds: int) -> AgentCredentials:
        """Credentials for one agent, least privilege, expiring after ``ttl_seconds``."""
        validate_token(agent_id, what="agent")
        if ttl_seconds <= 0:
            raise InvalidInput("ttl_seconds must be positive", details={"ttl": ttl_seconds})
        record = self._org(org)
        expires = int(time.time()) + ttl_seconds
        text, user = self._user_creds(
            record.account, agent_id, claims.agent_permissions(org, agent_id), expires
        )
        record.users[user.public_key] = {"agent": agent_id, "expires": expires}
        self._save(org)
        return AgentCredentials(
            org=org,
            agent_id=agent_id,
            public_key=user.public_key,
            expires_at=datetime.fromtimestamp(expires, UTC),
            inbox_prefix=subjects.agent_inbox_prefix(agent_id),
            creds=text,
        )

    def revoke_agent(
        self, org: str, agent_id: str | None = None, *, public_key: str | None = None
    ) -> list[str]:
        """Record a revocation of every credential of ``agent_id`` (or of one
        ``public_key``). The caller pushes :meth:`org_account_jwt` for it to take effect."""
        record = self._org(org)
        now = int(time.time())
        keys = [
            key
            for key, user in record.users.items()
            if (agent_id is not None and user["agent"] == agent_id) or key == public_key
        ]
        if public_key is not None and public_key not in keys:
            keys.append(public_key)
        for key in keys:
            record.revocations[key] = now
        self._save(org)
        return keys

    def mint_org_admin_creds(self, org: str, *, ttl_seconds: int = 300) -> str:
        """Unrestricted credentials inside one org's account, for managing its streams."""
        record = self._org(org)
        text, _ = self._user_creds(
            record.account, f"{org}-platform-admin", {}, int(time.time()) + ttl_seconds
        )
        return text

    def mint_org_link_creds(self, org: str, *, ttl_seconds: int) -> str:
        """The control plane's own user inside one org's account (see
        :func:`claims.org_link_permissions`): it cannot speak as an agent."""
        record = self._org(org)
        text, _ = self._user_creds(
            record.account,
            f"{org}-platform-link",
            claims.org_link_permissions(org),
            int(time.time()) + ttl_seconds,
        )
        return text

    def mint_platform_creds(self) -> str:
        """The control plane's user in PLATFORM (see :func:`claims.platform_permissions`)."""
        text, _ = self._user_creds(
            self._platform, "corral-platform", claims.platform_permissions(), None
        )
        return text

    def mint_system_creds(self) -> str:
        text, _ = self._user_creds(self._system, "corral-system", {}, None)
        return text
