"""An agent written against the wire protocol alone (docs/protocol.md), with nats-py and no
Corral import: what an agent in another language does."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import nats


async def main() -> None:
    org, me = os.environ["CORRAL_ORG"], os.environ["CORRAL_AGENT_ID"]
    nc = await nats.connect(
        os.environ["CORRAL_NATS_URL"],
        user_credentials=os.environ["CORRAL_CREDS_FILE"],
        inbox_prefix=f"_INBOX.{me}".encode(),
    )
    js = nc.jetstream()
    inbox = await js.pull_subscribe_bind(durable=me, stream="INBOX")
    status = f"org.{org}.agents.{me}.status"
    events = f"org.{org}.agents.{me}.events"

    def report(kind: str, task: str | None = None, progress: float | None = None) -> bytes:
        body = {"agentId": me, "status": kind, "currentTask": task, "progress": progress}
        return json.dumps(body).encode()

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await nc.publish(status, report("ready"))
    while not stop.is_set():
        try:
            msgs = await inbox.fetch(1, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            await msg.ack()
            task = json.loads(msg.data)
            if task["type"] != "delegate":
                continue
            await nc.publish(status, report("accepted", task["taskId"], 0.0))
            result = {
                "taskId": task["taskId"],
                "fromAgent": me,
                "toAgent": task["fromAgent"],
                "type": "complete",
                "payload": {"reversed": str(task["payload"].get("text", ""))[::-1]},
                "attempt": task.get("attempt", 1),
            }
            await nc.publish(events, json.dumps(result).encode())
            await nc.publish(status, report("idle"))
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
