"""Talking to the server's account resolver as a SYSTEM user: onboarding and offboarding
tenants by pushing JWTs, with no reload and no restart.

``$SYS.REQ.CLAIMS.UPDATE`` takes an account JWT (the server keeps it in its ``resolver: full``
directory and applies it at once: new limits, exports, imports and revocations; revoked users
are disconnected). ``$SYS.REQ.CLAIMS.DELETE`` takes an operator-signed list of accounts and
needs ``allow_delete: true`` in the resolver config; the server then closes the account's
connections. Every reply is JSON ``{"data": {"code": 200, ...}}`` or ``{"error": {...}}``.
"""

from __future__ import annotations

import json
import logging
from types import TracebackType
from typing import Any

from nats.aio.client import Client

from corral.bus.failures import ViolationRecorder, open_connection, translating
from corral.domain.errors import Conflict, Unavailable

__all__ = ["ResolverClient"]

log = logging.getLogger(__name__)

_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"
_DELETE = "$SYS.REQ.CLAIMS.DELETE"


class ResolverClient:
    """An async context manager over a SYSTEM-account connection."""

    def __init__(self, url: str, creds: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self._creds = creds
        self._nc: Client | None = None
        self._violations = ViolationRecorder(name="corral-system")

    async def __aenter__(self) -> ResolverClient:
        self._nc = await open_connection(
            self.url,
            self._creds,
            name="corral-system",
            recorder=self._violations,
            timeout=self.timeout,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._nc is not None:
            await self._nc.close()
            self._nc = None

    async def _request(self, subject: str, body: str, *, doing: str) -> dict[str, Any]:
        if self._nc is None:
            raise Unavailable(f"{doing}: the SYSTEM connection is not open")
        with translating(doing, recorder=self._violations):
            reply = await self._nc.request(subject, body.encode(), timeout=self.timeout)
        try:
            answer = json.loads(reply.data)
        except ValueError as exc:
            raise Unavailable(f"{doing}: unreadable reply {reply.data[:200]!r}") from exc
        error = answer.get("error")
        if error:
            raise Conflict(f"{doing}: the server refused: {error}", details={"error": error})
        data: dict[str, Any] = answer.get("data") or {}
        return data

    async def ask(self, subject: str, body: bytes, *, doing: str) -> dict[str, Any]:
        """A request to the server's own API (``$SYS.REQ.SERVER...``): its reply's ``data``.

        Raises:
            Conflict: the server answered with an error.
            Unavailable: no answer.
        """
        return await self._request(subject, body.decode(), doing=doing)

    async def push(self, account_jwt: str, *, name: str) -> None:
        """Create or update one account.

        Raises:
            Conflict: the server refused the JWT (its message is kept).
            Unavailable: no answer.
        """
        data = await self._request(_UPDATE, account_jwt, doing=f"pushing account {name!r}")
        log.debug("account %s pushed: %s", name, data.get("message"))

    async def delete(self, request_jwt: str, *, name: str) -> None:
        """Delete accounts from the resolver (see :meth:`BusAuthority.delete_request`)."""
        data = await self._request(_DELETE, request_jwt, doing=f"deleting account {name!r}")
        log.debug("account %s deleted: %s", name, data.get("message"))
