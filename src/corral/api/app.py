"""The FastAPI application over a running :class:`~corral.control.platform.Platform`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from corral import __version__
from corral.api import console, errors
from corral.api.access import AccessLog
from corral.api.auth import scope_authenticator
from corral.api.guard import BodyGuard, LoginLimiter
from corral.api.ratelimit import RateLimiter
from corral.api.routes import agents, events, metrics, models, orgs, roles, secrets, tasks
from corral.control.platform import Platform
from corral.settings import Settings

__all__ = ["api_for", "create_app", "serve", "warm"]


def create_app(platform: Platform) -> FastAPI:
    """The API of ``platform``."""
    app = api_for(platform.settings)
    serve(app, platform)
    return app


def api_for(settings: Settings) -> FastAPI:
    """The API before it serves a platform (:func:`serve` says which): a replica makes it
    once, while it stands by, and serves each term's platform with it. Every part of it finds
    the platform in ``app.state.platform`` when it is called."""
    app = FastAPI(
        title="Corral",
        version=__version__,
        description="Multi-tenant orchestration platform for AI agents.",
    )

    def current() -> Platform:
        p: Platform = app.state.platform
        return p

    errors.install(app, deposed=lambda: not current().leads())
    app.state.login_limiter = LoginLimiter(
        key_rate=settings.key_failures_per_second, key_burst=settings.key_failures_burst
    )
    app.add_middleware(
        BodyGuard,
        max_body=settings.max_body_bytes,
        max_task_body=settings.max_payload_bytes + 64 * 1024,
        authenticate=scope_authenticator(current),
        limiter=app.state.login_limiter,
    )
    app.add_middleware(AccessLog)  # outermost: it logs what the guard refuses too

    def health(status: str) -> dict[str, str | int | None]:
        platform = current()
        lease = platform.lease
        return {
            "status": status,
            "role": "leader" if lease is not None else "single",
            "replica": lease.replica if lease else None,
            "epoch": lease.epoch if lease else None,
            # serving while start-up recovery relaunches agents: say how far it is
            "recovery": platform.recovery.describe(),
        }

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str | int | None]:
        return health("ok")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> dict[str, str | int | None]:
        return health("ready")

    for module in (orgs, agents, roles, tasks, secrets, models, events, metrics):
        app.include_router(module.router, responses=errors.ERROR_RESPONSES)
    app.include_router(console.router)
    _errors_are_json(app)
    return app


def serve(app: FastAPI, platform: Platform) -> None:
    """From now on ``app`` answers for ``platform`` (with rate limits of its own)."""
    app.state.platform = platform
    app.state.limiter = RateLimiter()


def warm(app: FastAPI) -> None:
    """Build now what the app would build at its first requests: its middleware and the
    routes of every router it includes (FastAPI builds an included router's routes, a
    pydantic adapter per parameter and response, at the first request that looks into it:
    on a replica just elected, under load, that took longer than the rest of the takeover)."""
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    pending: list[object] = list(app.router.routes)
    while pending:
        route = pending.pop()
        for build in ("effective_candidates", "effective_low_priority_routes"):
            built = getattr(route, build, None)  # the FastAPI releases that build lazily
            if callable(built):
                pending.extend(built())


def _errors_are_json(app: FastAPI) -> None:
    """Errors answer JSON whatever a route streams on success (FastAPI would document an
    event stream's 404 as ``text/event-stream``)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if status[:1] in "45" and "application/json" not in content and content:
                        response["content"] = {"application/json": next(iter(content.values()))}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
