"""A small synchronous HTTP client for the REST API, raising the error tree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from corral.domain import errors, wire
from corral.settings import default_data_dir

__all__ = ["ApiClient", "resolve_target"]


def resolve_target(
    url: str | None, key: str | None, data_dir: Path | None
) -> tuple[str, str | None]:
    """Flags win, then ``CORRAL_URL``/``CORRAL_API_KEY``, then the local data dir."""
    root = data_dir or Path(os.environ.get("CORRAL_DATA_DIR") or default_data_dir())
    url = url or os.environ.get("CORRAL_URL")
    if not url and (root / "api.url").exists():
        url = (root / "api.url").read_text().strip()
    key = key or os.environ.get("CORRAL_API_KEY")
    if not key and (root / "admin.key").exists():
        key = (root / "admin.key").read_text().strip()
    return url or "http://127.0.0.1:8470", key


class ApiClient:
    def __init__(self, url: str, key: str | None, *, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise errors.Unavailable(
                f"the Corral API at {self.url} did not answer {method} {path} in time ({exc!r})"
            ) from exc
        except httpx.HTTPError as exc:
            raise errors.Unavailable(
                f"cannot reach the Corral API at {self.url}: {exc}. Is `corral up` running?"
            ) from exc
        if resp.status_code == 204:
            return None
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code >= 400:
            error = wire.error_from_wire(body, message=f"HTTP {resp.status_code}")
            if resp.status_code == 429:
                raise errors.RateLimited(
                    error.message, retry_after=float(resp.headers.get("Retry-After", 1))
                )
            raise error
        return body

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)
