"""The leader lease of replicated control planes on PostgreSQL, and its fencing epoch.

Any number of control planes (replicas) may run against one PostgreSQL database; exactly one
leads — runs the dispatcher, the agents' runtime and every writer of task state — and the others
stand by. Leading takes two things, both held on one connection kept for that purpose:

- the session advisory lock of :mod:`corral.store.writer_lock` (the same key, so a replica and a
  single control plane exclude each other too). PostgreSQL drops it when the holder's session
  ends: a leader killed with -9 frees it at once.
- the ``leader_lease`` row: its ``epoch`` is raised at every takeover, and the holder renews
  ``renewed_at`` (the database's clock, so replicas' clocks never matter) every
  ``lease_seconds / 4``.

A process that is paused (SIGSTOP) or cut off from the database keeps its session, and so its
advisory lock, as long as the server does not notice. So a standby that finds the row not
renewed for longer than the lease ends every session of the stale holder (each replica names
its sessions ``corral:<replica>``), which frees the lock and aborts whatever transaction the
holder had open, and then takes over.

Fencing: every journal transaction of the leader first reads the lease row ``FOR KEY SHARE``
and goes on only if the epoch is still its own, and the database itself refuses (a trigger, see
migration ``0006``) any history row stamped with another epoch than the current one. A takeover
locks the row ``FOR UPDATE`` to raise the epoch, which waits for such transactions to end, so a
transition is either committed before the new leader reads the store or refused. A renewal
(an ``UPDATE`` of no key column) does not conflict with them: a busy journal never delays it. The leader also trusts its
lease only until ``lease_seconds`` after the last renewal it *sent* (its own monotonic clock),
which is before any standby can find it stale: a leader resumed after a pause knows at once.

The lease's connection lives on a thread of its own (its own event loop): a renewal never
waits behind the work of the control plane's event loop (hundreds of requests, a takeover's
rebuild), so a healthy leader under load does not lose its lease for being late to renew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from corral.domain.errors import Deposed, Unavailable
from corral.store.writer_lock import ADVISORY_KEY

__all__ = ["Leader", "LeaderLease", "session_name"]

log = logging.getLogger("corral.store.lease")

_STATE = (
    "SELECT epoch, holder, api_url, "
    "extract(epoch FROM clock_timestamp() - renewed_at)::float8 AS age "
    "FROM leader_lease WHERE id = 1"
)
#: FOR UPDATE: waits for every journal transaction (they read the row FOR KEY SHARE) to end
_TAKE = (
    "UPDATE leader_lease SET epoch = epoch + 1, holder = $1, api_url = $2, "
    "renewed_at = clock_timestamp() "
    "WHERE id = (SELECT id FROM leader_lease WHERE id = 1 FOR UPDATE) RETURNING epoch"
)
_RENEW = (
    "UPDATE leader_lease SET renewed_at = clock_timestamp() "
    "WHERE id = 1 AND epoch = $1 AND holder = $2"
)
_END_SESSIONS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE application_name = $1 AND datname = current_database() AND pid <> pg_backend_pid()"
)


T = TypeVar("T")


class _LeaseLoop:
    """An event loop on a thread of its own, where the lease's connection lives."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def call(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the lease's loop; cancelling the caller cancels it there."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
            self._thread.start()
            self._loop = loop
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))

    def stop(self) -> None:
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            if not thread.is_alive():
                loop.close()


def session_name(replica: str) -> str:
    """The ``application_name`` of every database session of ``replica``."""
    return f"corral:{replica}"[:63]


def asyncpg_url(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


@dataclass(frozen=True, slots=True)
class Leader:
    """The lease row as a standby reads it."""

    epoch: int
    holder: str | None
    api_url: str | None
    age: float | None  # seconds since the last renewal (database clock)


class LeaderLease:
    """Campaign for, hold and renew the lease of one replica.

    Args:
        url: the PostgreSQL database URL.
        replica: this replica's name, unique among the replicas (e.g. the Pod's name).
        api_url: where this replica serves its API, recorded with the lease for standbys.
        lease_seconds: how long a lease lives without being renewed.
        poll_seconds: the least time between two of a standby's attempts to take the lease.

    A standby campaigning waits for the advisory lock in the database (up to
    :attr:`wait_seconds` at a time, then it looks whether the holder is stale): PostgreSQL
    hands it the lock the moment the holder's session ends, with no polling in between.
    """

    def __init__(
        self,
        url: str,
        *,
        replica: str,
        api_url: str,
        lease_seconds: float = 5.0,
        poll_seconds: float = 0.2,
    ) -> None:
        if lease_seconds <= 0 or poll_seconds <= 0:
            raise ValueError("lease_seconds and poll_seconds must be positive")
        self._url = asyncpg_url(url)
        self.replica = replica
        self.api_url = api_url
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.session = session_name(replica)
        self.epoch: int | None = None  # while leading
        self._valid_until = 0.0
        self._conn: Any = None
        self._reader: Any = None  # reads the row: never waits behind a campaign's lock wait
        self._thread = _LeaseLoop(f"corral-lease-{replica}"[:40])
        self._lock: asyncio.Lock | None = None  # made on the lease's loop
        self._read_lock: asyncio.Lock | None = None  # likewise, the reader's

    @property
    def renew_seconds(self) -> float:
        return self.lease_seconds / 4

    @property
    def wait_seconds(self) -> float:
        """How long a standby waits for the advisory lock before it looks whether the holder
        is stale (a paused holder keeps its session, and so the lock)."""
        return min(self.lease_seconds / 4, 1.0)

    def valid(self) -> bool:
        """Whether this replica may still act as the leader (its own clock, no I/O)."""
        return self.epoch is not None and time.monotonic() < self._valid_until

    # -- the connection -------------------------------------------------------------------
    async def _connection(self) -> Any:
        import asyncpg  # type: ignore[import-untyped]  # no stubs

        if self._conn is None or self._conn.is_closed():
            self.epoch = None  # a new session holds no advisory lock
            try:
                self._conn = await asyncpg.connect(
                    self._url, server_settings={"application_name": self.session}, timeout=10
                )
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                raise Unavailable(f"cannot reach the database for the leader lease: {exc}") from exc
        return self._conn

    def _guard(self) -> asyncio.Lock:
        """The lock of the lease's connection (on the lease's loop, made there)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _run(self, what: str, *args: Any) -> Any:
        return await self._thread.call(self._run_here(what, *args))

    async def _run_here(self, what: str, *args: Any) -> Any:
        import asyncpg

        async with self._guard():
            conn = await self._connection()
            try:
                return await conn.fetch(what, *args, timeout=max(self.lease_seconds / 2, 1.0))
            except TimeoutError as exc:
                if self.epoch is None:
                    await self._drop()
                # else: a slow read must not end the session that holds the lease (and its
                # advisory lock); the renewals say whether it is still held
                raise Unavailable(f"the leader lease's database session is slow: {exc}") from exc
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                await self._drop()
                raise Unavailable(f"the leader lease's database session failed: {exc}") from exc

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self.epoch = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)

    async def _read_here(self) -> Any:
        """The lease row, on the reader's connection (the lease's own may be waiting for the
        advisory lock for a while: a standby forwarding a request must not wait for that)."""
        import asyncpg

        if self._read_lock is None:
            self._read_lock = asyncio.Lock()
        async with self._read_lock:
            if self._reader is None or self._reader.is_closed():
                try:
                    self._reader = await asyncpg.connect(
                        self._url, server_settings={"application_name": self.session}, timeout=10
                    )
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    raise Unavailable(f"cannot reach the database for the lease: {exc}") from exc
            try:
                return await self._reader.fetch(_STATE, timeout=max(self.lease_seconds / 2, 1.0))
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                reader, self._reader = self._reader, None
                with contextlib.suppress(Exception):
                    await reader.close(timeout=1)
                raise Unavailable(f"reading the leader lease failed: {exc}") from exc

    # -- standing by ----------------------------------------------------------------------
    async def leader(self) -> Leader | None:
        """The lease row now (``None`` before anyone ever led)."""
        rows = await self._thread.call(self._read_here())
        if not rows or rows[0]["holder"] is None:
            return None
        row = rows[0]
        return Leader(row["epoch"], row["holder"], row["api_url"], row["age"])

    async def try_take(self, *, wait: float = 0.0) -> int | None:
        """Take the lease if it is free (or freed within ``wait`` seconds) or its holder is
        stale; the new epoch, or ``None``."""
        if wait > 0:
            got = await self._thread.call(self._wait_lock_here(wait))
        else:
            rows = await self._run("SELECT pg_try_advisory_lock($1) AS got", ADVISORY_KEY)
            got = rows[0]["got"]
        started = time.monotonic()  # before the row's renewal time is taken (the database's)
        if not got:
            current = await self.leader()
            if current is not None and current.age is not None and current.age > self.lease_seconds:
                if current.holder == self.replica:
                    return None  # our own old session: it ends with the connection we dropped
                ended = (await self._run(_END_SESSIONS, session_name(current.holder or "")))[0][0]
                log.warning(
                    "leader %s (epoch %d) has not renewed its lease for %.1fs: ended its %d "
                    "database sessions",
                    current.holder,
                    current.epoch,
                    current.age,
                    ended,
                )
            return None
        try:
            rows = await self._run(_TAKE, self.replica, self.api_url)
        except Unavailable:
            raise  # the session is gone, and its advisory lock with it
        self.epoch = int(rows[0]["epoch"])
        self._valid_until = started + self.lease_seconds
        log.info("replica %s leads now (epoch %d)", self.replica, self.epoch)
        return self.epoch

    async def _wait_lock_here(self, wait: float) -> bool:
        """Wait up to ``wait`` seconds for the advisory lock, in the database (granted the
        moment its holder's session ends); whether it was taken."""
        import asyncpg

        # one implicit transaction: when the wait times out, the SET is rolled back with it;
        # when the lock is granted, the session's lock_timeout is put back at once
        wait_for = (
            f"SET lock_timeout = {max(round(wait * 1000), 1)}; "
            f"SELECT pg_advisory_lock({int(ADVISORY_KEY)}); SET lock_timeout = 0"
        )
        async with self._guard():
            conn = await self._connection()
            try:
                await conn.execute(wait_for, timeout=wait + max(self.lease_seconds / 2, 1.0))
            except asyncpg.exceptions.LockNotAvailableError:
                return False  # still held
            except TimeoutError as exc:
                await self._drop()  # not leading: this session holds nothing
                raise Unavailable(f"the leader lease's database session is slow: {exc}") from exc
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                await self._drop()
                raise Unavailable(f"the leader lease's database session failed: {exc}") from exc
            return True

    async def campaign(self) -> int:
        """Wait until this replica leads; its epoch. The database being away is waited out."""
        while True:
            began = time.monotonic()
            try:
                epoch = await self.try_take(wait=self.wait_seconds)
            except Unavailable as exc:
                log.warning("campaigning for the lease: %s", exc.message)
                epoch = None
            if epoch is not None:
                return epoch
            await asyncio.sleep(max(began + self.poll_seconds - time.monotonic(), 0.0))

    # -- leading --------------------------------------------------------------------------
    async def renew(self) -> None:
        """Renew the lease.

        Raises:
            Deposed: another replica took it (the epoch moved on).
            Unavailable: the database did not answer (the lease still runs out on its own).
        """
        await self._thread.call(self._renew_here())

    async def _renew_here(self) -> None:
        epoch = self.epoch
        if epoch is None:
            raise Deposed(f"replica {self.replica} does not hold the leader lease")
        started = time.monotonic()
        async with self._guard():
            conn = await self._connection()
            if self.epoch is None:  # the connection was new: the advisory lock is gone
                raise Deposed(f"replica {self.replica} lost its lease session")
            try:
                # as long as the lease still runs: a slow answer is no reason to give it up
                # (ending the session would free the advisory lock to a standby at once)
                status = await conn.execute(
                    _RENEW, epoch, self.replica, timeout=max(self._left(), self.renew_seconds)
                )
            except Exception as exc:
                await self._drop()
                raise Unavailable(f"renewing the leader lease failed: {exc}") from exc
        if status != "UPDATE 1":
            self.epoch = None
            raise Deposed(f"replica {self.replica} was deposed: epoch {epoch} is no longer current")
        self._valid_until = started + self.lease_seconds

    async def hold(self) -> str:
        """Renew the lease until it is lost; why it was lost. The renewals run on the lease's
        own loop, so they keep their pace however busy the caller's loop is."""
        return await self._thread.call(self._hold_here())

    async def _hold_here(self) -> str:
        last = time.monotonic()
        while True:
            # every renew_seconds from the start of the last renewal, however long it took
            await asyncio.sleep(max(last + self.renew_seconds - time.monotonic(), 0.0))
            last = time.monotonic()
            if not self.valid():
                return "the lease ran out before it could be renewed"
            try:
                await self._renew_here()
            except Deposed as exc:
                return exc.message
            except Unavailable as exc:
                log.warning("%s; the lease stays valid for %.1fs", exc.message, self._left())
                if not self.valid():
                    return "the lease ran out: the database could not be reached"

    def _left(self) -> float:
        return max(self._valid_until - time.monotonic(), 0.0)

    def lose(self) -> None:
        """Stop trusting the lease at once (e.g. a write was refused as deposed)."""
        self.epoch = None
        self._valid_until = 0.0

    async def close(self) -> None:
        """Let go of the lease (the session ends, and the advisory lock with it)."""
        await self._thread.call(self._close_here())
        self._lock = self._read_lock = None
        self._thread.stop()  # made again by the next call

    async def _close_here(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                await reader.close(timeout=1)
        async with self._guard():
            await self._drop()
