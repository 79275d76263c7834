"""A hostile agent for the noisy-neighbour figures and tests: it connects with its own
credentials and publishes large messages on its own status and events subjects (all its
credentials allow) as fast as it can, for its first argument's seconds (else
``CORRAL_FLOOD_SECONDS``, default 10), as JetStream
publishes where it can so that a refusal reaches it; then it idles until stopped. It writes
what it saw to ``flood.json`` in its workspace: messages sent, refused, and the first
refusal's text."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import nats
from nats.errors import Error as NatsError

from corral.sdk.config import AgentConfig


async def main() -> None:
    cfg = AgentConfig.from_env()
    seconds = float(
        sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CORRAL_FLOOD_SECONDS", 10)
    )
    size = int(os.environ.get("CORRAL_FLOOD_BYTES", str(900 * 1024)))
    nc = await nats.connect(
        cfg.nats_url,
        user_credentials=str(cfg.creds_file),
        inbox_prefix=f"_INBOX.{cfg.agent_id}".encode(),
    )
    js = nc.jetstream(timeout=2.0)
    pad = "x" * size
    status = json.dumps({"agentId": cfg.agent_id, "status": "working", "detail": {"pad": pad}})
    event = json.dumps(
        {
            "taskId": "task_0000000000000000",
            "from": cfg.agent_id,
            "to": "platform",
            "type": "complete",
            "payload": {"pad": pad},
        }
    )
    blobs = [status.encode(), event.encode()]
    subjects = [
        f"org.{cfg.org}.agents.{cfg.agent_id}.status",
        f"org.{cfg.org}.agents.{cfg.agent_id}.events",
    ]
    sent = refused = 0
    first_refusal = ""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        subject, blob = subjects[n % 2], blobs[n % 2]
        n += 1
        try:
            await js.publish(subject, blob)
            sent += 1
        except (TimeoutError, NatsError) as exc:  # full, refused, or not stored
            refused += 1
            first_refusal = first_refusal or f"{type(exc).__name__}: {exc}"
            try:
                await nc.publish(subject, blob)  # and once more without asking
                sent += 1
            except NatsError:
                pass
    report = {"sent": sent, "refused": refused, "firstRefusal": first_refusal}
    Path(cfg.workspace, "flood.json").write_text(json.dumps(report))
    await nc.flush()
    await asyncio.Event().wait()  # idle until stopped


if __name__ == "__main__":
    asyncio.run(main())
