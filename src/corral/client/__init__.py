"""``corral.client``: a typed Python client of the REST API, blocking (:class:`Client`) and
asyncio (:class:`AsyncClient`).

Requests are checked by the API's own request models before they are sent; answers are the
API's own answer models (:mod:`corral.api.answers`: frozen pydantic models with snake_case
attributes, re-exported here); errors are the platform's error tree
(:mod:`corral.domain.errors`). This is an edge of the platform, like
the CLI: no I/O of the platform's own (store, bus, runtime) belongs here.

    from corral.client import Client

    with Client("http://127.0.0.1:8470", api_key) as corral:
        corral.create_org("acme")
        task = corral.submit_task("acme", role="worker", payload={"op": "echo"})
        print(corral.wait_task("acme", task.id).result)
"""

from corral.api.answers import (
    Agent,
    AuditPage,
    CreatedOrg,
    Grant,
    ModelUsage,
    Org,
    OrgDetail,
    Role,
    Secret,
    Task,
    TaskDetail,
    TaskPage,
    Usage,
)
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
    "Agent",
    "AsyncClient",
    "AuditPage",
    "Call",
    "Client",
    "Conflict",
    "CorralError",
    "CreatedOrg",
    "Grant",
    "InvalidInput",
    "ModelUsage",
    "NotFound",
    "Org",
    "OrgDetail",
    "PermissionDenied",
    "QuotaExceeded",
    "RateLimited",
    "Role",
    "Secret",
    "Task",
    "TaskDetail",
    "TaskPage",
    "Unavailable",
    "Usage",
]
