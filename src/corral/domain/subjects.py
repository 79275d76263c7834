"""The bus's subject space and JetStream names: one definition for the platform, the bus
adapter and the agent SDK.

Inside each organization's own NATS account (the account is the isolation boundary; these
subjects are the seed's, and keep the org in the name so that imported events say who spoke):

- ``org.<org>.tasks.<agent>.inbox``     platform → agent: TaskMessage (durable, stream INBOX)
- ``org.<org>.agents.<agent>.status``   agent → platform: StatusMessage (durable in PLATFORM)
- ``org.<org>.agents.<agent>.events``   agent → platform: TaskMessage complete/blocked/delegate
- ``org.<org>.agents.<agent>.control``  platform → agent: ControlMessage (checkpoint, stop)
- ``platform.broadcast.>``              platform → every org
- ``platform.agents.status``            agent → platform: the seed's platform-wide status
- ``platform.vault.get``                agent → platform: signed secret read (request/reply)
"""

from __future__ import annotations

__all__ = [
    "BROADCAST_PREFIX",
    "EVENTS_STREAM",
    "INBOX_STREAM",
    "PLATFORM_STATUS",
    "VAULT_GET",
    "agent_control",
    "agent_events",
    "agent_inbox_prefix",
    "agent_status",
    "broadcast",
    "inbox_consumer",
    "org_events_wildcard",
    "org_inboxes",
    "org_prefix",
    "task_inbox",
]

INBOX_STREAM = "INBOX"  # in each org's account: work-queue over org.<org>.tasks.*.inbox
EVENTS_STREAM = "EVENTS"  # in the PLATFORM account: every org's imported agent subjects
BROADCAST_PREFIX = "platform.broadcast"
PLATFORM_STATUS = "platform.agents.status"
VAULT_GET = "platform.vault.get"


def org_prefix(org: str) -> str:
    return f"org.{org}"


def task_inbox(org: str, agent: str) -> str:
    return f"org.{org}.tasks.{agent}.inbox"


def org_inboxes(org: str) -> str:
    return f"org.{org}.tasks.*.inbox"


def agent_status(org: str, agent: str) -> str:
    return f"org.{org}.agents.{agent}.status"


def agent_events(org: str, agent: str) -> str:
    return f"org.{org}.agents.{agent}.events"


def agent_control(org: str, agent: str) -> str:
    return f"org.{org}.agents.{agent}.control"


def org_events_wildcard(org: str) -> str:
    """Everything an org's agents report: ``org.<org>.agents.>``."""
    return f"org.{org}.agents.>"


def broadcast(topic: str) -> str:
    return f"{BROADCAST_PREFIX}.{topic}"


def agent_inbox_prefix(agent: str) -> str:
    """The reply-subject prefix an agent connects with (nats-py ``inbox_prefix=``); its
    credentials let it subscribe to nothing else of ``_INBOX``."""
    return f"_INBOX.{agent}"


def inbox_consumer(agent: str) -> str:
    """The durable pull consumer on INBOX that only ``agent`` may read."""
    return agent
