"""Where the CLI finds its platform, and the client it talks to it with (the typed
:mod:`corral.client`, raising the error tree)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from corral.client import Client
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


class ApiClient(Client):
    """The CLI's client: :class:`corral.client.Client`, with the short forms the commands
    use for calls it has no method for."""

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)
