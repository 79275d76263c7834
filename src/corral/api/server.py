"""Run the control plane: the platform's services and the HTTP API in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from corral.api.app import create_app
from corral.api.gateway_app import serving_gateway
from corral.api.protocol import http_protocol
from corral.control import preflight
from corral.control.platform import Platform
from corral.settings import Settings

__all__ = ["RunningServer", "running", "serve"]

log = logging.getLogger("corral.server")


class RunningServer:
    def __init__(self, platform: Platform, url: str) -> None:
        self.platform = platform
        self.url = url
        self.gateway_url = platform.models.url  # agents' OpenAI-compatible model gateway


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[RunningServer]:
    """Check what must hold (:mod:`corral.control.preflight`), then start the platform and
    serve its API in this event loop until the block exits.

    Raises:
        CorralError: a check failed; nothing was started or written.
    """
    sock = await preflight.check(settings)
    try:
        async with Platform(settings) as platform, _serving(settings, platform, sock) as srv:
            yield srv
    finally:
        sock.close()


def http_config(app: ASGIApp, *, trusted_proxies: Sequence[str] = ()) -> uvicorn.Config:
    """How the HTTP server serves ``app``. The client of a request is the connection's peer,
    unless that is one of ``trusted_proxies``, whose ``X-Forwarded-For`` is believed then
    (uvicorn's default would believe it from any local process)."""
    return uvicorn.Config(
        app,
        log_level="warning",
        log_config=None,  # uvicorn's records go to the platform's log handler
        access_log=False,  # the app writes its own (corral.api.access)
        lifespan="off",
        http=http_protocol(),  # httptools, the request head bounded
        timeout_graceful_shutdown=3,
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=list(trusted_proxies),
    )


@contextlib.asynccontextmanager
async def _serving(
    settings: Settings, platform: Platform, sock: socket.socket
) -> AsyncIterator[RunningServer]:
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    server = uvicorn.Server(
        http_config(create_app(platform), trusted_proxies=settings.trusted_proxies)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]), name="corral-http")
    try:
        async with serving_gateway(platform.models.gateway, platform.models.socket):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the HTTP server stopped while starting")
                await asyncio.sleep(0.01)
            _write_private(settings.data_dir / "api.url", url + "\n")
            try:
                yield RunningServer(platform, url)
            finally:
                platform.hub.close()  # ends every event stream so the server can stop
                server.should_exit = True
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(FileNotFoundError):
            (settings.data_dir / "api.url").unlink()


async def serve(settings: Settings, *, on_ready: Callable[[RunningServer], None]) -> None:
    """Serve until cancelled (SIGINT/SIGTERM cancel the main task)."""
    async with running(settings) as srv:
        on_ready(srv)
        await asyncio.Event().wait()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the control plane's user alone, whole: it is
    written aside and renamed into place, so a reader never sees it empty or half written
    (one that read ``api.url`` as the server created it got no URL)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask, and if the file was there before
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
