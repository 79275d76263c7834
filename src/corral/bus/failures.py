"""Where nats-py's exceptions become Corral's error tree, and how permission violations reach
the caller.

The server reports a permission violation asynchronously: ``publish()`` and ``subscribe()``
return normally, the client's ``error_cb`` is called later, and a forbidden request simply
times out. :meth:`ViolationRecorder.on_error` is that ``error_cb``: it keeps what the server
said, so the next operation raises :class:`PermissionDenied` (or a caller awaits ``wait``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import nats.errors
import nats.js.errors
from nats.aio.client import Client, RawCredentials

from corral.domain.errors import (
    Conflict,
    CorralError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
    Unavailable,
)

__all__ = ["ViolationRecorder", "open_connection", "translate", "translating"]

log = logging.getLogger(__name__)

# JetStream error codes that mean "the tenant's own limits are full".
_QUOTA_CODES = frozenset({10002, 10026, 10027, 10028, 10047, 10077})
_NOT_FOUND_CODES = frozenset({10014, 10059})
_CONFLICT_CODES = frozenset({10058, 10013, 10099, 10148})


def _is_auth_failure(text: str) -> bool:
    lowered = text.lower()
    return "authorization violation" in lowered or "authentication" in lowered


def translate(exc: BaseException, *, doing: str) -> CorralError:
    """The Corral error for a nats-py exception raised while ``doing`` something."""
    text = str(exc) or type(exc).__name__
    message = f"{doing}: {text}"
    if isinstance(exc, CorralError):
        return exc
    if isinstance(exc, nats.js.errors.APIError):
        details = {"code": exc.code, "err_code": exc.err_code}
        if exc.err_code in _QUOTA_CODES:
            return QuotaExceeded(message, details=details)
        if exc.err_code in _NOT_FOUND_CODES or exc.code == 404:
            return NotFound(message, details=details)
        if exc.err_code in _CONFLICT_CODES or exc.code == 409:
            return Conflict(message, details=details)
        if exc.code == 400:
            return InvalidInput(message, details=details)
        return Unavailable(message, details=details)
    if isinstance(exc, nats.errors.NoRespondersError):
        return Unavailable(f"{doing}: nobody is listening")
    if isinstance(exc, nats.errors.TimeoutError | asyncio.TimeoutError):
        return Unavailable(f"{doing}: timed out")
    if isinstance(exc, nats.errors.MaxPayloadError | nats.errors.BadSubjectError):
        return InvalidInput(message)
    if isinstance(exc, nats.errors.AuthorizationError | nats.errors.InvalidUserCredentialsError):
        return Unauthenticated(message)
    if isinstance(exc, nats.errors.Error) and _is_auth_failure(text):
        return Unauthenticated(message)
    if "permissions violation" in text.lower():
        return PermissionDenied(message)
    if isinstance(exc, nats.errors.Error | OSError | nats.js.errors.Error):
        return Unavailable(message)
    return Unavailable(message)


@contextmanager
def translating(doing: str, *, recorder: ViolationRecorder | None = None) -> Iterator[None]:
    """Translate nats-py exceptions raised inside the block; a recorded permission violation
    wins over the timeout it usually causes."""
    if recorder is not None:
        recorder.check()
    try:
        yield
    except CorralError:
        raise
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as exc:
        if recorder is not None:
            recorder.check()
        raise translate(exc, doing=doing) from exc


async def open_connection(
    url: str,
    creds: str,
    *,
    name: str,
    recorder: ViolationRecorder,
    timeout: float,
    reconnect: bool = True,
    inbox_prefix: str = "_INBOX",
    reconnected: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    """Connect with creds text; a refused connection leaves no socket behind.
    ``reconnected`` is called each time the connection is made again.

    Raises:
        Unauthenticated: the server refused the credentials (bad, revoked or expired).
        Unavailable: the server could not be reached.
    """
    nc = Client()
    with translating(f"connecting to the bus at {url} as {name}"):
        try:
            await nc.connect(
                url,
                user_credentials=RawCredentials(creds),
                name=name,
                error_cb=recorder.on_error,
                inbox_prefix=inbox_prefix,
                reconnected_cb=reconnected,
                connect_timeout=int(max(1, timeout)),
                allow_reconnect=reconnect,
                # nats-py applies this to the first connect too, where 0 and -1 both mean
                # "forever": try twice now, and reconnect forever once connected.
                max_reconnect_attempts=1,
                reconnect_time_wait=1,
            )
        except BaseException:
            await nc.close()
            raise
    if reconnect:
        nc.options["max_reconnect_attempts"] = -1
    return nc


class ViolationRecorder:
    """Keeps the permission violations a connection reports, for the caller to see."""

    def __init__(self, *, name: str = "nats") -> None:
        self.name = name
        self._pending: list[str] = []
        self._seen = asyncio.Event()
        self.errors: list[str] = []  # everything the server reported, for diagnostics

    async def on_error(self, exc: Exception) -> None:
        """Pass as ``error_cb=recorder.on_error`` (nats-py wants a coroutine function)."""
        text = str(exc)
        self.errors.append(text)
        if "permissions violation" in text.lower():
            log.warning("%s: %s", self.name, text)
            self._pending.append(text)
            self._seen.set()
        elif not isinstance(exc, nats.errors.SlowConsumerError):
            log.info("%s: %s", self.name, text)

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(self._pending)

    def check(self) -> None:
        """Raise the violations reported since the last check, once.

        Raises:
            PermissionDenied: naming every subject the server refused.
        """
        if not self._pending:
            return
        seen, self._pending = self._pending, []
        self._seen.clear()
        raise PermissionDenied("; ".join(seen), details={"violations": seen})

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a violation and raise it; return if none came.

        Raises:
            PermissionDenied: the server refused something.
        """
        try:
            await asyncio.wait_for(self._seen.wait(), timeout)
        except TimeoutError:
            return
        self.check()
