"""Background tasks: failures are logged, and stopping before they ran leaves nothing behind."""

from __future__ import annotations

import asyncio
import logging

import pytest

from corral.control.background import Background
from tests.support import eventually


async def test_a_failure_is_logged_with_the_tasks_name(caplog: pytest.LogCaptureFixture) -> None:
    background = Background()

    async def fails() -> None:
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="corral.background"):
        background.spawn(fails(), "the-failing-one")
        await eventually(lambda: "boom" in caplog.text, message="the failure logged")
        await background.close()
    assert "the-failing-one failed" in caplog.text


async def test_closing_before_a_task_ran_leaves_no_coroutine_unawaited() -> None:
    """With filterwarnings=error, a coroutine never awaited fails the test run."""
    background = Background()
    ran: list[str] = []

    async def work() -> None:
        ran.append("ran")

    background.spawn(work(), "never-started")
    await background.close()  # cancelled before its first step
    assert ran == []


async def test_a_task_that_swallows_its_cancel_is_asked_again() -> None:
    background = Background()
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.Event().wait()  # swallows the first cancel

    background.spawn(stubborn(), "stubborn")
    await started.wait()
    await background.close(grace=0.05)


async def test_a_task_that_never_stops_is_left_behind_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """close() is bounded: a task that swallows every cancel is reported, not awaited forever."""
    background = Background()
    started, release = asyncio.Event(), asyncio.Event()

    async def deaf() -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallows every cancel

    background.spawn(deaf(), "deaf")
    await started.wait()
    with caplog.at_level(logging.WARNING, logger="corral.background"):
        await background.close(grace=0.05)
    assert "deaf did not stop; left behind" in caplog.text
    release.set()
    await eventually(lambda: not background._tasks, message="the deaf task ended")
