"""Secret reads from the agent's side: a signed request to the platform's vault over the bus.

The request is signed with the agent's own user nkey (see :mod:`corral.sdk.signing`), so the
platform can tell it from a replay or another agent's; the reply is a value or an error of
the tree, decoded by the same :func:`~corral.domain.wire.error_from_wire` as every client's.
"""

from __future__ import annotations

import base64

import nats.errors
from nats.aio.client import Client

from corral.domain import subjects, wire
from corral.domain.errors import PermissionDenied, Unavailable
from corral.domain.messages import decode, encode
from corral.sdk.config import AgentConfig

__all__ = ["read_secret"]


async def read_secret(nc: Client, config: AgentConfig, name: str, *, timeout: float = 5.0) -> bytes:
    """The secret ``name`` as the vault hands it to this agent.

    Raises:
        PermissionDenied: no grant covers it (the denial is audited), or the reply names no
            error the tree knows.
        NotFound: granted, but no such secret.
        Unavailable: the vault did not answer in time, or its reply is malformed.
    """
    # imported on first use: most agents never read a secret, and signing costs start-up time
    from corral.sdk.signing import sign_request

    body = sign_request(
        creds=config.creds_file.read_text(),
        org=config.org,
        agent_id=config.agent_id,
        secret=name,
    )
    try:
        reply = await nc.request(subjects.VAULT_GET, encode(body), timeout=timeout)
    except nats.errors.NoRespondersError as exc:
        raise Unavailable("the vault is not answering") from exc
    except nats.errors.TimeoutError as exc:
        raise Unavailable("the vault did not answer in time") from exc
    data = decode(reply.data)
    if wire.is_error(data):
        raise wire.error_from_wire(data, fallback=PermissionDenied, message="denied")
    value = data.get("value")
    if not isinstance(value, str):
        raise Unavailable("malformed vault reply")
    return base64.b64decode(value)
