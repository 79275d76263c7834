"""The example agents run as provisioned agents: the SDK ones and one that speaks the wire
protocol with nats-py alone (docs/protocol.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.e2e.conftest import Live

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def test_an_agent_written_against_the_wire_protocol_alone_does_tasks(live: Live) -> None:
    await live.org("acme")
    agent = await live.agent(
        "acme", "raw", role="raw", command=[sys.executable, str(EXAMPLES / "raw_protocol_agent.py")]
    )
    t = await live.task("acme", agent=agent["id"], payload={"text": "corral"})
    done = await live.wait_task("acme", t["id"])
    assert done["state"] == "completed" and done["result"] == {"reversed": "larroc"}


async def test_the_example_manager_delegates_to_workers(live: Live) -> None:
    await live.org("acme")
    # the workers it delegates to, and the echo role, run the built-in agent as declared
    await live.roles("acme", {"name": "worker", "maxAgents": 2}, {"name": "echo"})
    await live.agent(
        "acme", "boss", role="manager", command=[sys.executable, str(EXAMPLES / "manager_agent.py")]
    )
    t = await live.task(
        "acme", role="manager", payload={"items": ["a b c", "d e"], "role": "worker"}
    )
    done = await live.wait_task("acme", t["id"], timeout=40)
    assert done["state"] == "completed" and done["result"] == {"words": 5, "jobs_done": 1}
    t = await live.task("acme", role="echo", payload={"x": 1})  # no agent yet: one is provisioned
    done = await live.wait_task("acme", t["id"], timeout=40)
    assert done["state"] == "completed" and done["result"]["echo"] == {"x": 1}
