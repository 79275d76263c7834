"""Fixtures for the local runtime: a fresh data directory and runtime per test, per mechanism."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from corral.runtime.limits import Mechanism
from corral.runtime.local import LocalProcessRuntime


def mechanisms() -> list[str]:
    """The strongest mechanism this host has ("auto") and, if that is not it, rlimit too."""
    return ["auto", Mechanism.RLIMIT.value]


@pytest.fixture(params=mechanisms())
def mechanism(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def runtime(tmp_path: Path, mechanism: str) -> AsyncIterator[LocalProcessRuntime]:
    rt = LocalProcessRuntime(tmp_path / "data", mechanism=mechanism)
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
async def make_runtime(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., LocalProcessRuntime]]:
    """Several runtimes over one data directory, as a restarted control plane would have."""
    made: list[LocalProcessRuntime] = []

    def make(**kwargs: object) -> LocalProcessRuntime:
        rt = LocalProcessRuntime(tmp_path / "data", **kwargs)  # type: ignore[arg-type]
        made.append(rt)
        return rt

    try:
        yield make
    finally:
        for rt in reversed(made):
            await rt.close()
