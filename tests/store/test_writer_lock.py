"""One control plane per database: the writer lock on both backends."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from corral.domain.errors import Conflict
from corral.store.db import Database
from corral.store.writer_lock import WriterLock
from tests.support import eventually


async def test_a_second_writer_is_refused_until_the_first_lets_go(db: Database) -> None:
    first, second = WriterLock(db), WriterLock(db)
    await first.acquire()
    with pytest.raises(Conflict, match="another control plane is running"):
        await second.acquire()
    await first.release()
    await second.acquire()  # free again
    await second.release()


async def test_a_writer_that_dies_leaves_the_lock_free(db: Database) -> None:
    """kill -9 of a control plane must not leave the lock held: the kernel (SQLite's file
    lock) or the server (PostgreSQL's session lock) drops it with the process."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal, sys
        from corral.store.db import Database
        from corral.store.writer_lock import WriterLock

        async def main():
            db = Database({db.url!r})
            await WriterLock(db).acquire()
            print("held", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert child.stdout.strip() == "held" and child.returncode == -9, child.stderr
    lock = WriterLock(db)

    async def taken() -> bool:
        try:
            await lock.acquire()
        except Conflict:
            return False  # PostgreSQL may take a moment to notice the session ended
        return True

    await eventually(taken, timeout=10, message="the dead writer's lock released")
    await lock.release()
