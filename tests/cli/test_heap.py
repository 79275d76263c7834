"""The control plane's heap is settled once it is ready: start-up's objects frozen, later
garbage still collected."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import gc, weakref
    from corral.cli.loop import COLLECTOR_THRESHOLDS, run_loop, settle_heap

    async def nothing():
        return gc.get_threshold()

    assert run_loop(nothing()) == COLLECTOR_THRESHOLDS

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    assert gc.get_freeze_count() == 0
    settle_heap()
    frozen = gc.get_freeze_count()
    assert frozen > 1000, frozen  # the modules imported so far, at least
    settle_heap()
    assert gc.get_freeze_count() == frozen, "a second call froze again"
    made_after = cycle()
    gc.collect()
    assert made_after() is None, "a cycle made after the freeze was not collected"
    print("ok", frozen)
    """
)


def test_the_loop_collects_rarely_and_start_up_objects_are_frozen_once_later_cycles_collected() -> (
    None
):
    # in a process of its own: freezing the test runner's heap would outlive this test
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")
