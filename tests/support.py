"""Helpers shared by the tests: polling with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar, overload

T = TypeVar("T")


# A probe may answer None for "not yet": what comes back is its first truthy answer, never None.
@overload
async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T | None],
    *,
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Call ``probe`` until it returns a truthy value or raises nothing falsy; fail at the deadline.

    Returns the first truthy value. An AssertionError raised by ``probe`` counts as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = probe()
            if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
                value = await value
            if value:
                return value
            last = None
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s") from last
        await asyncio.sleep(interval)


def wait_until(
    probe: Callable[[], T | None], *, timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Synchronous twin of :func:`eventually` for code outside an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        threading.Event().wait(interval)


CORRAL = [sys.executable, "-m", "corral.cli"]


def corral_env() -> dict[str, str]:
    """This process's environment without any CORRAL_* setting, and a wide terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return env | {"COLUMNS": "200"}


@contextlib.contextmanager
def corral_up(
    data: Path,
    *,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    user: int | None = None,
) -> Iterator[CorralUp]:
    """``corral up`` as its own process, as a user runs it, until SIGTERM at the end; the
    exit code and output are checked then (``CorralUp.output``). ``python``: the interpreter
    it runs on; ``user``: the uid (and gid) it runs as, instead of this process's."""
    (data / "api.url").unlink(missing_ok=True)  # left behind by a killed control plane
    proc = subprocess.Popen(
        [python, "-m", "corral.cli", "up", "--data-dir", str(data), "--port", "0"],
        env=env or corral_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
    )
    up = CorralUp(proc, data)
    try:
        wait_until(lambda: (data / "api.url").exists() or proc.poll() is not None, timeout=30)
        if proc.poll() is not None:
            up.finish()
            raise AssertionError(up.output)
        yield up
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        up.finish()
        if not up.killed:
            assert proc.returncode == 0, up.output


class CorralUp:
    """A running ``corral up``. Its output is read as it comes (a thread of its own): a pipe
    nobody drains fills, and a control plane logging every request would then block on it."""

    def __init__(self, proc: subprocess.Popen[str], data: Path) -> None:
        self.proc = proc
        self.data = data
        self.killed = False
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="corral-up-output", daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        """What it has written so far (stdout and stderr)."""
        return "".join(self._lines)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    def finish(self) -> None:
        """Wait for it to exit and for the last of its output."""
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()

    def kill(self) -> None:
        """kill -9, as a crash would."""
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
