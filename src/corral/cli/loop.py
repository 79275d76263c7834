"""The event loop the control plane runs on.

uvloop where it is installed (it is a dependency; Linux and macOS): the control plane spends a
large share of its time in the loop itself — reading and writing the bus, scheduling callbacks
— and uvloop does that work in C (dispatch throughput +11 % in ``benchmarks/dispatch.py``).
The standard loop otherwise; behaviour is the same on both.

The garbage collector runs less often than Python's default (a young collection every
10,000 allocations instead of 700; the elder ones 20 times rarer instead of 10): most of the
control plane's objects die young by reference counting, and what the collector finds at each
run costs about the same whether it looks every 700 allocations or every 10,000. Its time in a
wave of 4,000 tasks across 200 orgs: 0.37 s -> 0.09 s.

Once the platform serves, :func:`settle_heap` takes what start-up left on the heap (the
modules, the web app, the orgs and agents loaded: some 250,000 objects) out of the garbage
collector's sight. Left in, every full collection walked them all: 160 ms with the loop
stopped, twice in a wave of 4,000 tasks across 200 orgs, a tenth of the control plane's time
(18 ms each once they are frozen).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_loop", "settle_heap"]

T = TypeVar("T")


#: (young, middle, old): see the module's docstring
COLLECTOR_THRESHOLDS = (10_000, 20, 20)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new event loop, as ``asyncio.run`` does, with the
    collector's thresholds at :data:`COLLECTOR_THRESHOLDS`."""
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop wheels
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def settle_heap() -> None:
    """Collect start-up's garbage, then freeze what is left: it stays alive as long as the
    process and no later collection walks it again. Objects made afterwards are collected as
    ever. Only the first call does anything: a later freeze would keep for good whatever
    cyclic garbage-to-be was alive at that moment (a replica may come to lead many times)."""
    if gc.get_freeze_count():
        return
    gc.collect()
    gc.freeze()
