"""Model calls from an agent: a configured async client for the platform's model gateway.

The platform gives every agent ``OPENAI_BASE_URL`` (its gateway) and ``OPENAI_API_KEY`` (the
agent's own gateway credential, never a provider's key), so any OpenAI-compatible client works
unchanged. ``ctx.llm`` adds one thing: each call is tagged with the task it is made for
(``X-Corral-Task``), so its tokens and cost are charged to that task's budget and shown with
it. Refusals arrive as Corral's own errors: :class:`~corral.domain.errors.BudgetExceeded`,
:class:`~corral.domain.errors.RateLimited`, :class:`~corral.domain.errors.NotFound` (no such
model in the org), and so on.

    answer = await ctx.llm.chat(model="small", messages=[{"role": "user", "content": "hi"}])
    async for chunk in ctx.llm.stream(model="small", messages=[...]):
        ...
    client = ctx.llm.openai()  # an openai.AsyncOpenAI, if that package is installed
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from corral.domain.errors import (
    BudgetExceeded,
    CorralError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["TASK_HEADER", "ModelClient"]

TASK_HEADER = "X-Corral-Task"

_shared: httpx.AsyncClient | None = None


def _client() -> httpx.AsyncClient:
    """One pooled HTTP client per agent process, shared by every task's ``ctx.llm``. The HTTP
    library is imported on the first model call: most agents' tasks make none, and importing
    it cost every agent (and every organization's fork server) a quarter of its start."""
    import httpx

    global _shared
    if _shared is None or _shared.is_closed:
        _shared = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0))
    return _shared


def _refusal(status: int, body: bytes) -> CorralError:
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    message = str(error.get("message") or f"the model gateway answered {status}")
    details = {"status": status, "code": error.get("code")}
    if status == 402:
        return BudgetExceeded(message, details=details)
    if status == 429:
        return RateLimited(message, retry_after=1.0, details=details)
    kinds: dict[int, type[CorralError]] = {
        400: InvalidInput,
        401: Unauthenticated,
        403: PermissionDenied,
        404: NotFound,
    }
    return kinds.get(status, Unavailable)(message, details=details)


class ModelClient:
    """Calls the org's models through the gateway on behalf of one task."""

    def __init__(self, *, base_url: str, api_key: str, task_id: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.task_id = task_id

    @classmethod
    def from_env(
        cls, *, task_id: str | None = None, env: Mapping[str, str] | None = None
    ) -> ModelClient:
        """Raises: InvalidInput: the environment has no gateway (``OPENAI_BASE_URL``)."""
        e = os.environ if env is None else env
        if not e.get("OPENAI_BASE_URL") or not e.get("OPENAI_API_KEY"):
            raise InvalidInput(
                "no model gateway in this agent's environment (OPENAI_BASE_URL, OPENAI_API_KEY)"
            )
        return cls(base_url=e["OPENAI_BASE_URL"], api_key=e["OPENAI_API_KEY"], task_id=task_id)

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._api_key}"}
        if self.task_id:
            headers[TASK_HEADER] = self.task_id
        return headers

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            r = await _client().post(self.base_url + path, json=body, headers=self.headers)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the model gateway could not be reached: {exc}") from exc
        if r.status_code != 200:
            raise _refusal(r.status_code, r.content)
        answer: dict[str, Any] = r.json()
        return answer

    async def chat(self, **body: Any) -> dict[str, Any]:
        """A chat completion (``/chat/completions``, not streamed): the answer as JSON.

        Raises:
            BudgetExceeded: the call could take the org's or the task's budget over.
            RateLimited: over the org's requests or tokens per minute.
            NotFound: the org declared no such model.
            Unavailable: the gateway or the upstream failed.
        """
        return await self._post("/chat/completions", {**body, "stream": False})

    async def embeddings(self, **body: Any) -> dict[str, Any]:
        """Embeddings (``/embeddings``); raises as :meth:`chat`."""
        return await self._post("/embeddings", body)

    async def stream(self, **body: Any) -> AsyncIterator[dict[str, Any]]:
        """A streamed chat completion: each chunk as JSON; the last carries ``usage``.
        Raises as :meth:`chat`."""
        import httpx

        request = {**body, "stream": True, "stream_options": {"include_usage": True}}
        try:
            async with _client().stream(
                "POST", self.base_url + "/chat/completions", json=request, headers=self.headers
            ) as r:
                if r.status_code != 200:
                    raise _refusal(r.status_code, await r.aread())
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if isinstance(chunk, dict) and "error" in chunk:
                        raise _refusal(502, data.encode())
                    yield chunk
        except httpx.HTTPError as exc:
            raise Unavailable(f"the model gateway could not be reached: {exc}") from exc

    def openai(self) -> Any:
        """An ``openai.AsyncOpenAI`` client on the gateway, tagging calls with the task.

        Raises:
            InvalidInput: the ``openai`` package is not installed.
        """
        try:
            import openai
        except ImportError:
            raise InvalidInput("the openai package is not installed; use chat()/stream()") from None
        headers = {TASK_HEADER: self.task_id} if self.task_id else None
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self._api_key, default_headers=headers
        )
