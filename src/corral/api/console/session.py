"""Logging in to the console: the key is typed once into a form (POST), then kept in an
HTTP-only, ``SameSite=Strict`` cookie — never in a URL, never readable by the page's script.
The API itself keeps taking keys only from the ``Authorization`` header.

Every console request is authenticated again from the cookie (a revoked key logs out at
once). A login, and a console request whose cookie holds no valid key, spend the failure
budgets of the client address and of the key they name (:class:`corral.api.guard.LoginLimiter`,
shared with the API): a flood of guesses spread over many addresses runs dry on the key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from corral.api.auth import Caller, authenticate, platform
from corral.api.console.html import HEADERS, esc, page
from corral.api.guard import LoginLimiter, client_address
from corral.domain.errors import CorralError, NotFound, PermissionDenied, Unauthenticated
from corral.domain.tenancy import Organization

__all__ = ["COOKIE", "answer", "console_caller", "console_org", "router", "same_origin"]

router = APIRouter(include_in_schema=False)

#: the cookie that holds the key
COOKIE = "corral_session"
_MAX_FORM = 4096

_FORM = """<form method="post" action="/login" class="login" id="login">
<label>API key <input name="key" type="password" autocomplete="off" autofocus required></label>
<button>log in</button></form>
<p class="hint">The admin key sees every organization; an org's key sees that org only.</p>"""


def _limiter(request: Request) -> LoginLimiter:
    limiter: LoginLimiter = request.app.state.login_limiter
    return limiter


async def console_caller(request: Request) -> Caller:
    """Who the console's cookie belongs to.

    Raises:
        Unauthenticated: no cookie, or a key that is unknown or revoked.
        RateLimited: this address failed too often.
    """
    key = request.cookies.get(COOKIE)
    if not key:
        raise Unauthenticated("not logged in")
    address = client_address(request.scope)
    _limiter(request).check(address, key)
    try:
        return await authenticate(platform(request), key)
    except Unauthenticated:
        _limiter(request).failed(address, key)
        raise


async def console_org(request: Request, who: Caller, slug: str) -> Organization:
    """``slug`` as ``who`` may see it: another tenant's org is not found, exactly as one that
    does not exist. An org key's requests count against its org's API rate."""
    p = platform(request)
    try:
        found = await p.tenants.get(slug)
    except NotFound:
        found = None
    if found is None or (not who.is_admin and found.id != who.org_id):
        raise NotFound(f"organization {slug!r} not found", details={"org": slug})
    if not who.is_admin:
        request.app.state.limiter.check(found.slug, found.plan)
    return found


def same_origin(request: Request) -> None:
    """Refuse a form posted from another site (the cookie is ``SameSite=Strict`` already;
    this is the second lock)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        origin = request.headers.get("referer")
    if origin is None:
        return
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin != own and not origin.startswith(own + "/"):
        raise PermissionDenied("a console action must come from the console's own pages")


def who_label(who: Caller) -> str:
    return "admin" if who.is_admin else f"org key {who.key_id}"


async def answer(request: Request, build: Callable[[Caller], Awaitable[Response]]) -> Response:
    """``build``'s page for the logged-in caller; the login form for a visitor; an error
    page naming what is wrong (404 for what the caller may not see) otherwise."""
    who: Caller | None = None
    try:
        who = await console_caller(request)
        return await build(who)
    except Unauthenticated:
        return RedirectResponse("/login", status_code=303, headers=HEADERS)
    except CorralError as exc:
        return page(
            "Corral — error",
            f'<p class="err" id="error">{esc(exc.message)}</p><p><a href="/">back</a></p>',
            who=who_label(who) if who else "",
            status=exc.http_status,
        )


@router.get("/login", response_class=HTMLResponse)
async def login_form() -> HTMLResponse:
    return page("Corral — log in", _FORM)


@router.post("/login")
async def login(request: Request) -> Response:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            return page(
                "Corral — log in", f"<p class=err>the form is too large</p>{_FORM}", status=413
            )
    key = (parse_qs(body.decode("utf-8", "replace")).get("key") or [""])[0].strip()
    address = client_address(request.scope)
    try:
        _limiter(request).check(address, key)
        await authenticate(platform(request), key)
    except Unauthenticated as exc:
        _limiter(request).failed(address, key)
        return page("Corral — log in", f"<p class=err>{esc(exc.message)}</p>{_FORM}", status=401)
    except CorralError as exc:
        return page(
            "Corral — log in", f"<p class=err>{esc(exc.message)}</p>{_FORM}", status=exc.http_status
        )
    response = RedirectResponse("/", status_code=303, headers=HEADERS)
    response.set_cookie(
        COOKIE,
        key,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    same_origin(request)
    response = RedirectResponse("/login", status_code=303, headers=HEADERS)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
