"""Fixtures for the local runtime: a fresh data directory and runtime per test, per mechanism
and per launch (exec'd, or forked by the fork server)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from corral.runtime.local import LocalProcessRuntime
from corral.runtime.local.limits import Mechanism
from tests.runtime import agents

REPO = Path(__file__).resolve().parents[2]


def mechanisms() -> list[str]:
    """The strongest mechanism this host has ("auto") and, if that is not it, rlimit too."""
    return ["auto", Mechanism.RLIMIT.value]


@pytest.fixture(params=mechanisms())
def mechanism(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=agents.LAUNCHES)
def launch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How this test's agents start: ``agents.spec`` builds its commands accordingly."""
    monkeypatch.setattr(agents, "default_launch", request.param)
    return str(request.param)


@pytest.fixture(autouse=True)
def _agents_import_the_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked agent imports ``tests.runtime.codeagent``, so the repository goes on the
    PYTHONPATH that ``default_env`` hands to agents and the fork server."""
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(dict.fromkeys(paths)))


@pytest.fixture
async def runtime(
    tmp_path: Path, mechanism: str, launch: str
) -> AsyncIterator[LocalProcessRuntime]:
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
