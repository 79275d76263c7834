"""Secret reads over the bus: how the platform learns which org and which agent is asking.

An agent requests ``platform.vault.get`` in its own account. Its org account imports PLATFORM's
export ``platform.vault.get.*`` (``account_token_position`` 4) as exactly
``platform.vault.get.<its own account key>``; the server refuses any other key in that token,
so the subject the platform receives names the calling account. The import also sets
``share``, so the server adds a ``Nats-Request-Info`` header (overwriting any the caller sent)
with the caller's account and user key. The platform maps the account key to the org and the
user key to the agent it minted that key for; a request whose header and subject disagree, or
from an account it does not know, is refused.

Every org has its own budget of requests (:class:`TokenBuckets`, checked once the caller is
known and before the handler runs): an org flooding the vault subject is refused with
``rate_limited`` and costs the others a dictionary lookup per flooded request.

Replies are JSON: the handler's object on success, ``{"error": {code, message, details}}``
otherwise (the shape of :meth:`CorralError.to_wire`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import nats.errors
from nats.aio.subscription import Subscription

from corral.bus import claims
from corral.domain import messages
from corral.domain.errors import CorralError, PermissionDenied, RateLimited, Unavailable

__all__ = [
    "REQUEST_INFO_HEADER",
    "Serving",
    "TokenBuckets",
    "VaultHandler",
    "VaultRequest",
    "answer",
]

log = logging.getLogger(__name__)

REQUEST_INFO_HEADER = "Nats-Request-Info"


@dataclass(frozen=True, slots=True)
class VaultRequest:
    """A secret read, with the caller as the server vouched for it."""

    org: str
    agent_id: str | None  # None: the user key was not minted for an agent of ``org``
    user: str  # the caller's user public key
    payload: dict[str, Any] = field(default_factory=dict)


VaultHandler = Callable[[VaultRequest], Awaitable[dict[str, Any]]]


class _Directory(Protocol):
    def org_for_account(self, account: str) -> str | None: ...

    def agent_for_user(self, org: str, user: str) -> str | None: ...


class TokenBuckets:
    """A token bucket per key: ``rate`` tokens a second, at most ``burst`` saved."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, at)

    def take(self, key: str) -> float:
        """0.0 if ``key`` may go now (a token is spent), else the seconds until it may."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)


def _caller(subject: str, headers: dict[str, str] | None, directory: _Directory) -> tuple[str, str]:
    prefix = f"{claims.VAULT_IMPORTED_PREFIX}."
    account = subject[len(prefix) :] if subject.startswith(prefix) else ""
    org = directory.org_for_account(account) if account else None
    if org is None:
        raise PermissionDenied("vault request from an account that is no organization")
    try:
        info = json.loads((headers or {})[REQUEST_INFO_HEADER])
    except (KeyError, ValueError):
        raise PermissionDenied("vault request without the server's caller info") from None
    if not isinstance(info, dict) or info.get("acc") != account or not info.get("user"):
        raise PermissionDenied("vault request whose caller info does not match its account")
    return org, str(info["user"])


async def answer(
    subject: str,
    headers: dict[str, str] | None,
    data: bytes,
    *,
    directory: _Directory,
    handler: VaultHandler,
    buckets: TokenBuckets | None = None,
) -> dict[str, Any]:
    """The reply to one vault request; never raises."""
    try:
        org, user = _caller(subject, headers, directory)
        wait = buckets.take(org) if buckets is not None else 0.0
        if wait:
            raise RateLimited(
                f"organization {org!r} is over its vault request rate; retry later",
                retry_after=round(wait, 3),
                details={"org": org},
            )
        request = VaultRequest(
            org=org,
            agent_id=directory.agent_for_user(org, user),
            user=user,
            payload=messages.decode(data),
        )
        return await handler(request)
    except CorralError as exc:
        return exc.to_wire()
    except Exception:
        log.exception("the vault handler failed on %s", subject)
        return Unavailable("the vault could not answer").to_wire()


class Serving:
    """A running responder; :meth:`close` stops it (so does leaving the PlatformBus)."""

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription

    async def close(self) -> None:
        with suppress(nats.errors.Error):  # the connection may already be gone
            await self._subscription.unsubscribe()
