"""What ``corral up`` checks before it starts anything: the data dir can be written, the API's
and the model gateway's ports are free, the database answers, the plans file loads.

Each failure is one :class:`~corral.domain.errors.CorralError` naming what is wrong; nothing
has been started (no nats-server, no agent) and nothing written (no admin key, no database
file) when one is raised. The API's socket is bound here and handed to the server, so the
port cannot be taken between the check and its use.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

from corral.control.plans_file import load_plans
from corral.domain.errors import InvalidInput, Unavailable
from corral.settings import Settings
from corral.store.db import check_reachable

__all__ = ["bind", "check", "check_data_dir"]


async def check(settings: Settings) -> socket.socket:
    """Every check, in order; returns the API's listening socket.

    Raises:
        InvalidInput: the data dir is not a writable directory; a bad plans file or
            database URL.
        Unavailable: a port is taken; the database cannot be reached.
    """
    check_data_dir(settings.data_dir)
    if settings.plans_file is not None:
        load_plans(settings.plans_file)
    sock = bind(settings.host, settings.port, what="the API")
    try:
        if settings.resolved_gateway_port:
            bind(settings.host, settings.resolved_gateway_port, what="the model gateway").close()
        if settings.database_url is not None:
            await check_reachable(settings.database_url)
    except BaseException:
        sock.close()
        raise
    return sock


def check_data_dir(path: Path) -> None:
    """``path`` is a directory this process can write in, or can be created as one.

    A probe file is created and removed (unnamed where the kernel allows it): the one
    reliable answer, for root as for anyone, on a read-only mount as on a full disk.
    """
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInput(
            f"data dir {path} cannot be used: {existing} is not a directory",
            details={"dataDir": str(path)},
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        what = "is not writable" if existing == path else f"cannot be created in {existing}"
        raise InvalidInput(
            f"data dir {path} {what}: {exc.strerror or exc}",
            details={"dataDir": str(path)},
        ) from exc
    if existing == path and not os.access(path, os.X_OK):
        raise InvalidInput(f"data dir {path} cannot be entered", details={"dataDir": str(path)})


def bind(host: str, port: int, *, what: str) -> socket.socket:
    """A listening socket on ``host:port``.

    Raises:
        Unavailable: the port is taken, or the address is not this machine's.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            why = f"port {port} on {host} is in use (another `corral up`?); use --port"
        else:
            why = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise Unavailable(f"{what}: {why}", details={"host": host, "port": port}) from exc
    sock.setblocking(False)
    return sock
