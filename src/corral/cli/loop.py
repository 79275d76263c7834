"""The event loop the control plane runs on.

uvloop where it is installed (it is a dependency; Linux and macOS): the control plane spends a
large share of its time in the loop itself — reading and writing the bus, scheduling callbacks
— and uvloop does that work in C (dispatch throughput +11 % in ``benchmarks/dispatch.py``).
The standard loop otherwise; behaviour is the same on both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_loop"]

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new event loop, as ``asyncio.run`` does."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop wheels
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
