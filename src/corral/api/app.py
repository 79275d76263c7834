"""The FastAPI application over a running :class:`~corral.control.platform.Platform`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from corral import __version__
from corral.api import errors
from corral.api.errors import error_response
from corral.api.ratelimit import RateLimiter
from corral.api.routes import agents, dashboard, events, metrics, orgs, secrets, tasks
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
    errors.install(app)
    limit = platform.settings.max_body_bytes

    @app.middleware("http")
    async def bound_body(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return error_response(
                413, "payload_too_large", f"request body is over the {limit}-byte limit"
            )
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            body = await request.body()
            if len(body) > limit:
                return error_response(
                    413, "payload_too_large", f"request body is over the {limit}-byte limit"
                )
        return await call_next(request)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    for module in (orgs, agents, tasks, secrets, events, metrics, dashboard):
        app.include_router(module.router)
    return app
