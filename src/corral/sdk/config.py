"""An agent's configuration: who it is, where its bus is, how many tasks it takes at once.

Read from the environment the platform gives every agent process (``CORRAL_*``), so that an
agent program needs no flags or files of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from corral.domain.errors import InvalidInput
from corral.domain.wire import MAX_SLOTS

__all__ = ["AgentConfig", "parse_slots"]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    org: str
    agent_id: str
    role: str
    nats_url: str
    creds_file: Path
    workspace: Path
    heartbeat_seconds: float = 5.0
    slots: int = 1  # tasks handled at once; announced to the platform when ready
    max_payload: int = 1024 * 1024  # the largest message the org's bus account carries
    #: the largest payload or result of a task (through the org's object store past max_payload)
    max_object: int = 1024 * 1024
    #: what the org's agents together may publish per second (objects are put at half of it)
    ingress_bytes: int = 8 * 1024 * 1024

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> AgentConfig:
        e = dict(os.environ if env is None else env)
        missing = [
            k
            for k in ("CORRAL_ORG", "CORRAL_AGENT_ID", "CORRAL_NATS_URL", "CORRAL_CREDS_FILE")
            if not e.get(k)
        ]
        if missing:
            raise InvalidInput(f"agent environment is missing {', '.join(missing)}")
        return cls(
            org=e["CORRAL_ORG"],
            agent_id=e["CORRAL_AGENT_ID"],
            role=e.get("CORRAL_ROLE", "general"),
            nats_url=e["CORRAL_NATS_URL"],
            creds_file=Path(e["CORRAL_CREDS_FILE"]),
            workspace=Path(e.get("CORRAL_WORKSPACE") or Path.cwd()),
            heartbeat_seconds=float(e.get("CORRAL_HEARTBEAT_SECONDS", "5")),
            slots=parse_slots(e.get("CORRAL_AGENT_SLOTS", "1")),
            max_payload=_positive(e.get("CORRAL_MAX_PAYLOAD", str(1024 * 1024)), "MAX_PAYLOAD"),
            max_object=_positive(e.get("CORRAL_MAX_OBJECT", str(1024 * 1024)), "MAX_OBJECT"),
            ingress_bytes=_positive(
                e.get("CORRAL_INGRESS_BYTES", str(8 * 1024 * 1024)), "INGRESS_BYTES"
            ),
        )


def parse_slots(text: str) -> int:
    """A slot count as the environment spells it.

    Raises:
        InvalidInput: not a whole number from 1 to :data:`~corral.domain.agents.MAX_SLOTS`.
    """
    try:
        slots = int(text)
    except ValueError:
        raise InvalidInput(f"CORRAL_AGENT_SLOTS must be a whole number, got {text!r}") from None
    if not 1 <= slots <= MAX_SLOTS:
        raise InvalidInput(f"CORRAL_AGENT_SLOTS must be between 1 and {MAX_SLOTS}, got {slots}")
    return slots


def _positive(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise InvalidInput(f"CORRAL_{name} must be a positive number of bytes, got {text!r}")
    return value
