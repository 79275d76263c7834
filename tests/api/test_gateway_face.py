"""The gateway's HTTP face over a real socket, above a stand-in for the gateway's service: a
large body reaches it whole and one over the limit is refused, every answer carries the
gateway's own time (Server-Timing), a stream is relayed and settled, and refusals take
OpenAI's error shape with the status its client expects."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest

from corral.api.gateway_app import serving_gateway
from corral.control.gateway import CallAnswer, ModelGateway
from corral.domain.errors import BudgetExceeded, RateLimited


class _StandInGateway:
    """Answers as :class:`ModelGateway` would, from what a test sets."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.tasks: list[str | None] = []
        self.refusal: Exception | None = None
        self.stream = False
        self.finished = 0

    async def list_models(self, token: str | None) -> bytes:
        return b'{"object":"list","data":[]}'

    async def call(self, kind: str, token: str | None, raw: bytes, *, task: str | None) -> Any:
        self.bodies.append(raw)
        self.tasks.append(task)
        if self.refusal is not None:
            raise self.refusal
        if not self.stream:
            return CallAnswer(200, body=b'{"ok":true}', upstream_seconds=0.0)

        async def events() -> AsyncIterator[bytes]:
            for word in (b"one", b"two"):
                yield b"data: " + word + b"\n\n"

        async def finish() -> None:
            self.finished += 1

        return CallAnswer(200, "text/event-stream", events=events(), finish=finish)


@pytest.fixture
async def face() -> AsyncIterator[tuple[_StandInGateway, httpx.AsyncClient]]:
    stand_in = _StandInGateway()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with (
        serving_gateway(cast(ModelGateway, stand_in), sock, max_body=1024 * 1024),
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield stand_in, client


async def test_a_large_body_arrives_whole_and_the_answer_says_the_gateways_own_time(
    face: tuple[_StandInGateway, httpx.AsyncClient],
) -> None:
    stand_in, client = face
    body = b'{"model":"small","messages":[{"role":"user","content":"' + b"x" * 900_000 + b'"}]}'
    r = await client.post("/v1/chat/completions", content=body, headers={"X-Corral-Task": "task_1"})
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert stand_in.bodies == [body] and stand_in.tasks == ["task_1"]
    gateway, upstream = r.headers["server-timing"].split(", ")
    assert gateway.startswith("gateway;dur=") and float(gateway.split("=")[1]) >= 0
    assert upstream == "upstream;dur=0.000"


async def test_a_body_over_the_limit_is_refused_before_the_gateway_sees_it(
    face: tuple[_StandInGateway, httpx.AsyncClient],
) -> None:
    stand_in, client = face
    r = await client.post("/v1/chat/completions", content=b"x" * (1024 * 1024 + 1))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_request"
    assert "over 1048576 bytes" in r.json()["error"]["message"]
    assert stand_in.bodies == []


async def test_a_stream_is_relayed_and_settled(
    face: tuple[_StandInGateway, httpx.AsyncClient],
) -> None:
    stand_in, client = face
    stand_in.stream = True
    r = await client.post("/v1/chat/completions", content=b'{"model":"small","stream":true}')
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    assert r.text == "data: one\n\ndata: two\n\n"
    assert stand_in.finished == 1


async def test_refusals_take_openais_shape_and_status(
    face: tuple[_StandInGateway, httpx.AsyncClient],
) -> None:
    stand_in, client = face
    stand_in.refusal = BudgetExceeded("role writer's 2026-12 token budget would be exceeded")
    r = await client.post("/v1/chat/completions", content=b"{}")
    assert r.status_code == 402
    assert r.json()["error"]["code"] == "budget_exceeded"
    assert r.json()["error"]["type"] == "insufficient_quota"
    stand_in.refusal = RateLimited("over its requests per minute", retry_after=2.2)
    r = await client.post("/v1/embeddings", content=b"{}")
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    r = await client.get("/v1/chat/completions")
    assert r.status_code == 400 and "use POST" in r.json()["error"]["message"]
    r = await client.post("/v1/nothing", content=b"{}")
    assert r.status_code == 404
    assert (await client.get("/v1/models")).json() == {"object": "list", "data": []}
