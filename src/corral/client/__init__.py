"""``corral.client``: a typed Python client of the REST API, blocking (:class:`Client`) and
asyncio (:class:`AsyncClient`).

Requests are checked by the API's own request models before they are sent; errors are the
platform's error tree (:mod:`corral.domain.errors`). This is an edge of the platform, like
the CLI: no I/O of the platform's own (store, bus, runtime) belongs here.

    from corral.client import Client

    with Client("http://127.0.0.1:8470", api_key) as corral:
        corral.create_org("acme")
        task = corral.submit_task("acme", role="worker", payload={"op": "echo"})
        print(corral.wait_task("acme", task["id"])["result"])
"""

from corral.client.calls import JSON, TERMINAL_STATES, Call
from corral.client.clients import AsyncClient, Client
from corral.domain.errors import (
    Conflict,
    CorralError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    Unavailable,
)

__all__ = [
    "JSON",
    "TERMINAL_STATES",
    "AsyncClient",
    "Call",
    "Client",
    "Conflict",
    "CorralError",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "QuotaExceeded",
    "RateLimited",
    "Unavailable",
]
