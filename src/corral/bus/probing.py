"""A round trip through the server, to tell a bus that answers from one that is down,
restarting or hung (see :mod:`corral.control.bus_health`).

The probe asks JetStream for the PLATFORM account's figures (``$JS.API.INFO``, which the
control plane's user may ask): any answer, figures, an error or "no responders", proves the
server read and processed it. A flush (PING/PONG) would do
too, but nats-py cannot forget a flush that timed out: the late PONG then fails its reader.
"""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client

from corral.domain.errors import Unavailable

__all__ = ["HEALTH_SUBJECT", "ping"]

HEALTH_SUBJECT = "$JS.API.INFO"


async def ping(nc: Client, *, timeout: float = 2.0) -> None:
    """Return once the server answered.

    Raises:
        Unavailable: no answer within ``timeout`` (or the connection is closed or reconnecting).
    """
    try:
        await nc.request(HEALTH_SUBJECT, b"", timeout=timeout)
    except nats.errors.NoRespondersError:
        return
    except (nats.errors.Error, TimeoutError) as exc:
        raise Unavailable(f"the bus did not answer within {timeout:g}s ({exc!r})") from exc
