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

__all__ = ["create_app"]


def create_app(platform: Platform) -> FastAPI:
    app = FastAPI(
        title="Corral",
        version=__version__,
        description="Multi-tenant orchestration platform for AI agents.",
    )
    app.state.platform = platform
    app.state.limiter = RateLimiter()
    errors.install(app, deposed=lambda: not platform.leads())
    app.state.login_limiter = LoginLimiter(
        key_rate=platform.settings.key_failures_per_second,
        key_burst=platform.settings.key_failures_burst,
    )
    app.add_middleware(
        BodyGuard,
        max_body=platform.settings.max_body_bytes,
        max_task_body=platform.settings.max_payload_bytes + 64 * 1024,
        authenticate=scope_authenticator(platform),
        limiter=app.state.login_limiter,
    )
    app.add_middleware(AccessLog)  # outermost: it logs what the guard refuses too

    role = "leader" if platform.lease is not None else "single"

    def health(status: str) -> dict[str, str | int | None]:
        lease = platform.lease
        return {
            "status": status,
            "role": role,
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
