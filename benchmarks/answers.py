"""What the API's answer models cost: a page of tasks (the heaviest list the API answers)
rendered by a route that declares its answer model (validated, then serialized by pydantic),
by one that declares it only to document it and renders the page as it is (what the task
list does), and by the same route declaring ``dict[str, Any]`` (what the API did before), in process
over ASGI, in CPU time (the machine may be shared); and what the client pays to read the
page back typed.

    .venv/bin/python benchmarks/answers.py [--tasks 500] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI, Response
from pydantic import TypeAdapter

from corral.api import answers
from corral.domain.tasks import Priority, TaskState
from corral.store.tasks import TaskRecord


def _page(n: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    tasks = [
        TaskRecord(
            id=f"task_{i:06d}", seq=i, org_id="org_acme", org="acme", plan="standard",
            role="worker", target_agent=None, agent_id="agent-acme-w-1a2b3c", parent_id=None,
            from_agent=None, priority=Priority.NORMAL, deadline=None, requirements={"gpu": 0},
            payload={"op": "echo", "n": i, "text": "x" * 64}, result={"echo": {"n": i}},
            state=TaskState.COMPLETED, attempts=1, progress=1.0, not_before=None,
            created_at=now, updated_at=now,
        ).to_wire()
        for i in range(n)
    ]  # fmt: skip
    return {"tasks": tasks, "nextCursor": None}


async def _timed(client: httpx.AsyncClient, path: str, requests: int) -> float:
    await client.get(path)  # warm
    started = time.process_time()
    for _ in range(requests):
        r = await client.get(path)
        r.raise_for_status()
    return (time.process_time() - started) / requests * 1000


async def main(tasks: int, requests: int) -> None:
    page = _page(tasks)
    app = FastAPI()

    @app.get("/typed", response_model=answers.TaskPage, response_model_exclude_unset=True)
    async def typed() -> dict[str, Any]:
        return page

    @app.get("/plain")
    async def plain() -> dict[str, Any]:
        return page

    rendered = TypeAdapter(dict[str, Any])

    @app.get("/rendered", response_model=answers.TaskPage)
    async def as_listed() -> Response:  # what GET /v1/orgs/{org}/tasks does
        return Response(rendered.dump_json(page), media_type="application/json")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
        assert (await client.get("/typed")).json() == (await client.get("/plain")).json()
        plain_ms = await _timed(client, "/plain", requests)
        typed_ms = await _timed(client, "/typed", requests)
        rendered_ms = await _timed(client, "/rendered", requests)
        body = (await client.get("/typed")).json()
    started = time.process_time()
    for _ in range(requests):
        answers.TaskPage.model_validate(body)
    read_ms = (time.process_time() - started) / requests * 1000
    print(f"a page of {tasks} tasks, {requests} requests each, in process over ASGI (CPU time)")  # noqa: T201
    print(f"  plain dict (dict[str, Any]):   {plain_ms:7.2f} ms a request")  # noqa: T201
    print(f"  answer model (TaskPage):        {typed_ms:7.2f} ms a request")  # noqa: T201
    print(f"  documented, rendered as is:     {rendered_ms:7.2f} ms a request")  # noqa: T201
    print(f"  client reading it as TaskPage:  {read_ms:7.2f} ms a page")  # noqa: T201


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.requests))
