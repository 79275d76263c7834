"""One handler maps the error tree (and FastAPI's validation errors) to the JSON shape
``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from corral.domain.errors import CorralError, RateLimited

__all__ = ["ERROR_RESPONSES", "ErrorBody", "error_response", "install"]

log = logging.getLogger("corral.api")


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable: invalid_input, not_found, conflict, ...")
    message: str = Field(description="one line, for people")
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    """The shape of every error the API answers."""

    error: ErrorDetail


def _described(text: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": text}


#: what any route may answer besides its success, declared once for the OpenAPI document
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _described("the body is not valid JSON"),
    401: _described("no API key, or an unknown or revoked one"),
    403: _described("the key may not do this (an org key on an admin route)"),
    404: _described("not found, or another organization's"),
    409: _described("the current state does not allow it, or a quota or limit refuses it"),
    413: _described("the request body is over the size limit"),
    422: _described("invalid input: the message names the field and the problem"),
    429: _described("over the plan's request rate; Retry-After says when to retry"),
    503: _described("a dependency (the store or the bus) is unavailable"),
}


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status)


def _methods_at(request: Request) -> set[str]:
    """Every method some route serves at the request's path (Starlette names only the
    first route that matched the path)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return methods


def install(app: FastAPI, *, deposed: Callable[[], bool] = lambda: False) -> None:
    """Map errors to responses. ``deposed`` says whether this replica lost its leader lease:
    what fails then (its database sessions were ended by the new leader) is answered 503
    ``deposed``, which a client (or a standby forwarding) sends again to the new leader."""

    @app.exception_handler(CorralError)
    async def corral_error(_: Request, exc: CorralError) -> JSONResponse:
        response = error_response(exc.http_status, exc.code, exc.message, exc.details)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.5)))
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
                "problem": e.get("msg", ""),
            }
            for e in exc.errors()
        ]
        summary = "; ".join(f"{p['field'] or 'body'}: {p['problem']}" for p in problems)
        return error_response(
            422, "invalid_input", summary or "invalid input", {"problems": problems}
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            400: "invalid_input",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }
        response = error_response(
            exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail)
        )
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(sorted(_methods_at(request)))
        return response

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        if deposed():
            log.info("a request failed as this replica stepped down: %s", exc)
            return error_response(
                503, "deposed", "this replica lost the leader lease while answering: send again"
            )
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal", "internal error; see the control plane's log")
