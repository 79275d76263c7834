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

from corral.runtime.local.processes import tree

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

    monkeypatch.setattr(psutil, "_ppid_map", counting("ppid_map", psutil._ppid_map))
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
