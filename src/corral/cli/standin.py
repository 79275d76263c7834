"""A local stand-in for a model provider, for ``corral demo``, the tests and the benchmarks:
no provider is reachable from where they run. A small OpenAI-compatible server speaking the
real wire format (JSON with ``usage``; streamed ``data: {...}`` chunks, a usage chunk
when asked for with ``stream_options.include_usage``, then ``data: [DONE]``), on a free local port.

Every answer uses ``prompt_tokens`` = :attr:`StandIn.prompt_tokens` and ``completion_tokens``
= the smaller of ``max_tokens`` and :attr:`StandIn.completion_tokens`, so tests know exactly
what each call used. It checks the provider key and remembers what it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from corral.domain.errors import Unavailable

__all__ = ["WORDS", "StandIn", "main", "serving"]

STARTUP_SECONDS = 30.0
WORDS = ["Hello", " from", " the", " stand-in", " model"]


@dataclass
class StandIn:
    key: str
    prompt_tokens: int = 7
    completion_tokens: int = 5
    received: list[dict[str, Any]] = field(default_factory=list)
    keys_seen: set[str] = field(default_factory=set)
    url: str = ""
    record: bool = True

    def _usage(self, body: dict[str, Any]) -> dict[str, int]:
        out = min(body.get("max_tokens") or 10**9, self.completion_tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": out,
            "total_tokens": self.prompt_tokens + out,
        }

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            body = await request.json()
            auth = request.headers.get("authorization", "")
            if self.record:
                self.received.append(body)
                self.keys_seen.add(auth)
            if auth != f"Bearer {self.key}":  # as providers do, quoting the key back
                message = f"Incorrect API key provided: {auth.removeprefix('Bearer ')}"
                return JSONResponse(
                    {"error": {"message": message, "type": "invalid_request_error"}}, 401
                )
            usage = self._usage(body)
            created = int(time.time())
            if not body.get("stream"):
                return JSONResponse(
                    {
                        "id": "chatcmpl-standin",
                        "object": "chat.completion",
                        "created": created,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "".join(WORDS)},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                    }
                )
            include = bool((body.get("stream_options") or {}).get("include_usage"))

            async def chunks() -> AsyncIterator[bytes]:
                base = {
                    "id": "chatcmpl-standin",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body["model"],
                }
                for i, word in enumerate(WORDS):
                    delta = {"content": word, **({"role": "assistant"} if i == 0 else {})}
                    chunk = {
                        **base,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                    }
                    if include:
                        chunk["usage"] = None
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                yield f"data: {json.dumps(end)}\n\n".encode()
                if include:
                    yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode()
                yield b"data: [DONE]\n\n"

            return StreamingResponse(chunks(), media_type="text/event-stream")

        async def embeddings(request: Request) -> Response:
            body = await request.json()
            if self.record:
                self.received.append(body)
            if request.headers.get("authorization") != f"Bearer {self.key}":
                return JSONResponse({"error": {"message": "bad key"}}, 401)
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            return JSONResponse(
                {
                    "object": "list",
                    "model": body["model"],
                    "data": [
                        {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                        for i, _ in enumerate(inputs)
                    ],
                    "usage": {
                        "prompt_tokens": self.prompt_tokens,
                        "total_tokens": self.prompt_tokens,
                    },
                }
            )

        return Starlette(
            routes=[
                Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/embeddings", embeddings, methods=["POST"]),
            ]
        )


@contextlib.asynccontextmanager
async def serving(stand_in: StandIn) -> AsyncIterator[StandIn]:
    """Serve ``stand_in`` on a free local port in this event loop until the block ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    stand_in.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server = uvicorn.Server(
        uvicorn.Config(stand_in.app(), log_level="warning", access_log=False, lifespan="off")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]), name="stand-in-upstream")
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not server.started and not task.done():
            if time.monotonic() > deadline:
                raise Unavailable(f"the stand-in upstream did not serve in {STARTUP_SECONDS:g}s")
            await asyncio.sleep(0.01)
        if task.done():
            task.result()  # it stopped while starting: raise what went wrong
        yield stand_in
    finally:
        server.should_exit = True
        await task
        sock.close()


def main() -> None:
    """``python -m corral.cli.standin KEY``: serve a stand-in (recording nothing) until killed;
    prints its base URL on the first line."""
    import sys

    async def serve() -> None:
        async with serving(StandIn(key=sys.argv[1], record=False)) as stand_in:
            print(stand_in.url, flush=True)  # noqa: T201
            await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
