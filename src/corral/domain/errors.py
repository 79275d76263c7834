"""The one error tree of Corral.

::

    CorralError                 code, message, details
    ├── InvalidInput            bad input from a user or a wire (HTTP 422, exit 2)
    │   └── TooLarge            a payload or result over the plan's maximum (HTTP 413)
    ├── NotFound                unknown id, or another tenant's (HTTP 404, exit 4)
    ├── Conflict                state does not allow it (HTTP 409, exit 5)
    │   └── QuotaExceeded       admission refused by quota or limit range (HTTP 409, exit 6)
    │       └── BudgetExceeded  a model call could take a token or cost budget over (HTTP 409)
    ├── Unauthenticated         no or bad credential (HTTP 401, exit 7)
    ├── PermissionDenied        authenticated but not allowed (HTTP 403, exit 7)
    ├── RateLimited             over the plan's request rate (HTTP 429, exit 8)
    └── Unavailable             a dependency is down or timed out (HTTP 503, exit 9)
        └── Deposed             this replica lost the leader lease: it committed nothing

Adapters translate foreign exceptions into this tree with ``raise ... from exc``; the API maps
it to statuses in one handler and the CLI to exit codes and a one-line message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "BudgetExceeded",
    "Conflict",
    "CorralError",
    "Deposed",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "QuotaExceeded",
    "RateLimited",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
]


class CorralError(Exception):
    """Root of every error Corral raises on purpose."""

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def of_item(self, index: int, of: int) -> CorralError:
        """This error, said of item ``index`` (from 0) of ``of`` asked for together."""
        if of > 1 and "item" not in self.details:
            self.message = f"item {index} of {of}: {self.message}"
            self.args = (self.message,)
            self.details["item"] = index
        return self

    def to_wire(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidInput(CorralError):
    code = "invalid_input"
    http_status = 422
    exit_code = 2


class TooLarge(InvalidInput):
    """A payload or result larger than the organization's plan allows."""

    code = "too_large"
    http_status = 413


class NotFound(CorralError):
    code = "not_found"
    http_status = 404
    exit_code = 4


class Conflict(CorralError):
    code = "conflict"
    http_status = 409
    exit_code = 5


class QuotaExceeded(Conflict):
    code = "quota_exceeded"
    exit_code = 6


class BudgetExceeded(QuotaExceeded):
    code = "budget_exceeded"


class Unauthenticated(CorralError):
    code = "unauthenticated"
    http_status = 401
    exit_code = 7


class PermissionDenied(CorralError):
    code = "permission_denied"
    http_status = 403
    exit_code = 7


class RateLimited(CorralError):
    code = "rate_limited"
    http_status = 429
    exit_code = 8

    def __init__(
        self, message: str, *, retry_after: float, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message, details={**(details or {}), "retry_after": retry_after})
        self.retry_after = retry_after


class Unavailable(CorralError):
    code = "unavailable"
    http_status = 503
    exit_code = 9


class Deposed(Unavailable):
    """This control plane no longer holds the leader lease: another replica took over (its
    epoch is newer), so nothing this one decided was committed; the request may be sent again
    (to any replica) once the new leader answers (HTTP 503, exit 9)."""

    code = "deposed"
