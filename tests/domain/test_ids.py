"""Task ids: unique, random from the operating system in blocks, never repeated by a fork."""

from __future__ import annotations

import subprocess
import sys
import threading

from corral.domain import ids
from corral.domain.ids import new_task_id, task_created_at


def test_ids_stay_unique_across_many_blocks_of_random_bytes() -> None:
    made = [new_task_id(now=1_800_000_000) for _ in range(3 * ids._RandomPool.SIZE // 8 + 5)]
    assert len(set(made)) == len(made)
    assert all(task_created_at(t) == 1_800_000_000.0 for t in made)
    assert len({t[-16:] for t in made}) == len(made)  # the random part alone differs


def test_threads_never_share_bytes() -> None:
    made: list[str] = []

    def many() -> None:
        made.extend(new_task_id() for _ in range(2000))

    threads = [threading.Thread(target=many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == len(made) == 8000


FORKS = """
import os
from corral.domain.ids import new_task_id
new_task_id()  # the pool holds bytes a child would otherwise take the same way
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    os.write(write, " ".join(new_task_id() for _ in range(10)).encode())
    os._exit(0)
os.close(write)
mine = {new_task_id() for _ in range(10)}
with os.fdopen(read, "rb") as f:
    theirs = set(f.read().decode().split())
os.waitpid(pid, 0)
print(len(theirs), len(mine & theirs))
"""


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    # in a process of its own: this one has threads, which fork() must not be mixed with
    out = subprocess.run([sys.executable, "-c", FORKS], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["10", "0"]  # ten ids from the child, none of them the parent's
