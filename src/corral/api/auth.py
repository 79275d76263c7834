"""Who is calling: an admin key or an org key. An org key sees only its own org; any other
org answers 404, exactly as an org that does not exist."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.types import Scope

from corral.api.guard import LoginLimiter, client_address, presented_key
from corral.control.keys import split_key
from corral.control.platform import Platform
from corral.domain.errors import NotFound, PermissionDenied, Unauthenticated
from corral.domain.tenancy import Organization

__all__ = [
    "Caller",
    "admin_only",
    "authenticate",
    "caller",
    "org_scope",
    "platform",
    "scope_authenticator",
]


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str
    org_id: str | None  # None: admin

    @property
    def is_admin(self) -> bool:
        return self.org_id is None

    @property
    def label(self) -> str:
        return "admin" if self.is_admin else f"key:{self.key_id}"


def platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


async def authenticate(p: Platform, key: str | None) -> Caller:
    """The caller a key belongs to.

    Raises:
        Unauthenticated: no key, a malformed one, or one that is unknown or revoked.
    """
    if not key:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    parts = split_key(key)
    if parts is None:
        raise Unauthenticated("malformed API key")
    found = await p.tenants.authenticate(*parts)
    if found is None:
        raise Unauthenticated("unknown or revoked API key")
    return Caller(found.key_id, found.org_id)


def scope_authenticator(current: Callable[[], Platform]) -> Callable[[Scope], Awaitable[Caller]]:
    """Authenticates an ASGI scope from its headers, before any body is read, against the
    platform ``current()`` names then. A key is never taken from a URL (URLs end up in logs,
    histories and referrers)."""

    async def from_scope(scope: Scope) -> Caller:
        request = Request(scope)
        key = presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
        return await authenticate(current(), key)

    return from_scope


async def caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Caller:
    known: Caller | None = getattr(request.state, "caller", None)
    if known is not None:
        return known  # the guard authenticated this request before reading its body
    limiter: LoginLimiter = request.app.state.login_limiter
    address = client_address(request.scope)
    key = presented_key(authorization, x_api_key)
    limiter.check(address, key)
    try:
        return await authenticate(platform(request), key)
    except Unauthenticated:
        limiter.failed(address, key)
        raise


async def admin_only(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if not who.is_admin:
        raise PermissionDenied("this operation needs the admin key")
    return who


async def org_scope(
    org: str, request: Request, who: Annotated[Caller, Depends(caller)]
) -> Organization:
    """Resolve ``{org}`` for this caller (404 for other tenants) and apply its rate limit."""
    p = platform(request)
    try:
        found = await p.tenants.get(org)
    except NotFound:
        raise NotFound(f"organization {org!r} not found", details={"org": org}) from None
    if not who.is_admin and found.id != who.org_id:
        raise NotFound(f"organization {org!r} not found", details={"org": org})
    if not who.is_admin:
        request.app.state.limiter.check(found.slug, found.plan)
    return found
