"""Process trees: an agent's descendants are found from its own children down, not by reading
every process on the host."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from corral.runtime.local.processes import children_map, tree, tree_usage
from corral.runtime.local.processes import descendants as descendants_of

PAUSE = ["sleep", "600"]

# a child started from a thread (it is that thread's child, not the main thread's), and a
# child that starts a grandchild in a session of its own
LEADER = textwrap.dedent(
    f"""
    import signal, subprocess, sys, threading
    middle = subprocess.Popen(
        [sys.executable, "-c", "import signal, subprocess; "
         "g = subprocess.Popen({PAUSE!r}, start_new_session=True); "
         "print(g.pid, flush=True); signal.pause()"],
        stdout=subprocess.PIPE,
    )
    grandchild = int(middle.stdout.readline())
    started = []
    spawned = threading.Event()
    def spawn():
        started.append(subprocess.Popen({PAUSE!r}))
        spawned.set()
        threading.Event().wait()
    threading.Thread(target=spawn, daemon=True).start()
    spawned.wait()
    print(middle.pid, grandchild, started[0].pid, flush=True)
    signal.pause()
    """
)


@pytest.fixture
def family() -> Iterator[tuple[int, list[int]]]:
    """A leader in a session of its own and its descendants: the child that started a
    grandchild (outside the session), that grandchild, and the child started by a thread."""
    leader = subprocess.Popen(
        [sys.executable, "-c", LEADER], stdout=subprocess.PIPE, start_new_session=True
    )
    assert leader.stdout is not None
    found = [int(p) for p in leader.stdout.readline().split()]
    try:
        yield leader.pid, found
    finally:
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        leader.kill()
        leader.wait()
        leader.stdout.close()


@pytest.fixture
def table_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each read of the whole process table (psutil's parent map, or every process)."""
    reads: list[str] = []

    def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def read(*args: Any, **kwargs: Any) -> Any:
            reads.append(name)
            return real(*args, **kwargs)

        return read

    # psutil's private parent map, counted on purpose (its stubs leave it out)
    real_map = psutil._ppid_map  # type: ignore[attr-defined]
    monkeypatch.setattr(psutil, "_ppid_map", counting("ppid_map", real_map))
    monkeypatch.setattr(psutil, "process_iter", counting("process_iter", psutil.process_iter))
    return reads


def test_a_tree_holds_every_descendant_and_nothing_else(
    family: tuple[int, list[int]], table_reads: list[str]
) -> None:
    leader, descendants = family
    middle, grandchild, _ = descendants
    assert len(set(descendants)) == 3
    assert sorted(tree(leader)) == sorted(descendants)
    assert table_reads == []  # found from the leader down, not from every process
    assert set(tree(leader)) == {c.pid for c in psutil.Process(leader).children(recursive=True)}
    assert os.getpid() not in tree(leader)
    assert tree(middle) == [grandchild]  # a subtree, not its siblings


def test_a_gone_process_has_no_tree(table_reads: list[str]) -> None:
    assert tree(2**22 + 1) == []  # above any pid the kernel hands out
    assert table_reads == []


def test_the_children_map_read_from_proc_is_psutils(family: tuple[int, list[int]]) -> None:
    leader, descendants = family
    kids = children_map()
    mine = {leader, *descendants}
    for pid in mine:  # the family cannot change under the test: compare it exactly
        assert sorted(kids.get(pid, [])) == sorted(c.pid for c in psutil.Process(pid).children())
    assert sorted(descendants_of(leader, kids)) == sorted(descendants)


def test_usage_read_from_proc_is_what_psutil_measures(family: tuple[int, list[int]]) -> None:
    """CPU and RSS of a tree, read from each process's stat (the metrics' figures) and with
    psutil (which also measures the unique set): the same processes, the same figures."""
    leader, descendants = family
    burn = "import time, signal\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint(flush=True)\nsignal.pause()"
    busy = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE)
    assert busy.stdout is not None
    busy.stdout.readline()  # it used 0.3 s of CPU
    everyone = (leader, *descendants, busy.pid)
    # a tree whose figures do not move: every process is stopped while both are read
    for pid in everyone:
        os.kill(pid, signal.SIGSTOP)
    try:
        fast = tree_usage([leader, busy.pid], uss=False)
        full = tree_usage([leader, busy.pid], uss=True)
    finally:
        for pid in everyone:
            os.kill(pid, signal.SIGCONT)
        busy.kill()
        busy.wait()
        busy.stdout.close()
    assert fast is not None and full is not None
    assert fast.processes == full.processes == 5
    assert fast.rss_bytes == full.rss_bytes > 0
    assert fast.cpu_seconds >= 0.25
    assert abs(fast.cpu_seconds - full.cpu_seconds) < 0.02  # psutil rounds ticks its own way
    assert fast.uss_bytes is None and (full.uss_bytes is None or full.uss_bytes > 0)
    assert tree_usage([2**22 + 1], uss=False) is None  # gone: nothing measured
