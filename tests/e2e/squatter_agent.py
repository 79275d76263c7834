"""A tenant's agent that tries, all the time, to listen on the bus's port and the model
gateway's (for ``test_restart.py``). While no control plane runs those ports are free: an agent
that took them would receive every other agent's reconnect (their credentials' signatures) and
the next start's platform would have to move. It records every attempt in its workspace
(``squat.json``: how many, which succeeded, the errors by name) and answers tasks as any agent.

Runs as ``python -m squatter_agent`` (its organization's fork server)."""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from corral.sdk import Agent, TaskContext

agent = Agent.from_env()


def _ports() -> list[int]:
    urls = [os.environ["CORRAL_NATS_URL"], os.environ.get("OPENAI_BASE_URL", "")]
    return [p for p in (urlsplit(u).port for u in urls if u) if p]


def squat(out: Path, ports: list[int]) -> None:
    tries, bound, errors = 0, [], {}  # type: ignore[var-annotated]
    held: list[socket.socket] = []
    while True:
        for port in ports:
            tries += 1
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
                s.listen()
                held.append(s)  # taken: kept, as an attacker would
                bound.append(port)
            except OSError as exc:
                s.close()
                name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                errors[name] = errors.get(name, 0) + 1
        if tries % 20 == 0:
            tmp = out.with_suffix(".tmp")
            tmp.write_text(
                json.dumps({"tries": tries, "bound": bound, "errors": errors, "at": time.time()})
            )
            tmp.replace(out)
        time.sleep(0.01)


@agent.task
async def handle(ctx: TaskContext) -> dict[str, Any]:
    return {"pid": os.getpid()}


if __name__ == "__main__":
    workspace = Path(os.environ["CORRAL_WORKSPACE"])
    threading.Thread(target=squat, args=(workspace / "squat.json", _ports()), daemon=True).start()
    agent.run()
