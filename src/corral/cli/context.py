"""The shared pieces of every command: the client context, JSON or human output, and
errors turned into one line on stderr and an exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from corral.cli.client import ApiClient, resolve_target
from corral.domain.errors import CorralError

__all__ = ["Context", "pass_ctx", "run"]


class Context:
    def __init__(self, url: str | None, key: str | None, data_dir: Path | None, as_json: bool):
        self._url, self._key, self.data_dir, self.as_json = url, key, data_dir, as_json
        self._client: ApiClient | None = None

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            url, key = resolve_target(self._url, self._key, self.data_dir)
            self._client = ApiClient(url, key)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def emit(self, data: Any, human: Callable[[], None]) -> None:
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            human()


pass_ctx = click.make_pass_decorator(Context)


def run(fn: Callable[[], None]) -> None:
    """Run a command body; an error becomes one line on stderr and its exit code."""
    try:
        fn()
    except CorralError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
