"""The leader lease on PostgreSQL: one leader at a time, takeover of a stale one, and the
fencing epoch that refuses a deposed leader's writes in the database itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from corral.domain.errors import Deposed, Unavailable
from corral.domain.tasks import TaskState
from corral.store.db import Database
from corral.store.leases import LeaderLease, asyncpg_url
from corral.store.task_journal import TaskJournal
from corral.store.writer_lock import WriterLock
from tests.postgres import fresh_database
from tests.store.test_task_journal import _org, _row
from tests.support import eventually

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with fresh_database("corral_lease") as url:
        yield url


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Database]:
    database = Database(pg_url)
    await database.start()
    try:
        yield database
    finally:
        await database.close()


def _lease(url: str, name: str, *, lease_seconds: float = 5.0) -> LeaderLease:
    return LeaderLease(
        url, replica=name, api_url=f"http://{name}.invalid", lease_seconds=lease_seconds
    )


async def _history_count(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM task_events"))).scalar_one())


async def test_one_replica_leads_and_the_next_takes_over_with_a_new_epoch(
    db: Database, pg_url: str
) -> None:
    a, b = _lease(pg_url, "a"), _lease(pg_url, "b")
    try:
        first = await a.try_take()
        assert first is not None and a.valid()
        assert await b.try_take() is None  # a leads, and renews in time
        current = await b.leader()
        assert current is not None and current.holder == "a" and current.epoch == first
        assert current.api_url == "http://a.invalid"
        with pytest.raises(Exception, match="another control plane is running"):
            await WriterLock(db).acquire()  # a single control plane is refused too
        await a.close()  # a stops: its session, and the advisory lock, end
        second = await b.try_take()
        assert second == first + 1
    finally:
        await a.close()
        await b.close()


async def test_a_leader_that_stops_renewing_is_replaced_and_its_writes_are_refused(
    db: Database, pg_url: str
) -> None:
    """What a leader paused past its lease meets when it resumes: its sessions were ended,
    its epoch is past, its journal commits nothing and the database refuses its history."""
    org = await _org(db)
    old, new = _lease(pg_url, "old", lease_seconds=0.5), _lease(pg_url, "new", lease_seconds=0.5)
    try:
        old_epoch = await old.try_take()
        assert old_epoch is not None
        journal = TaskJournal(Database(pg_url, application_name=old.session), epoch=old_epoch)
        now = datetime.now(UTC)
        journal.create(_row("task_0001", org), at=now)
        assert await journal.flush() == set()  # committed while it leads
        before = await _history_count(db)

        # the old leader renews no more (as if paused): the new one takes over once it is stale
        new_epoch = await eventually(new.try_take, timeout=30, message="the takeover")
        assert new_epoch == old_epoch + 1
        assert not old.valid()  # its own clock says so, without asking anyone

        journal.move("task_0001", TaskState.QUEUED, TaskState.DISPATCHED, at=now, agent_id="x")
        with pytest.raises(Deposed):
            await journal.flush()
        with pytest.raises(Deposed):
            journal.move("task_0001", TaskState.DISPATCHED, TaskState.RUNNING, at=now)
        await journal.close()
        with pytest.raises(Deposed):
            await old.renew()
        assert await _history_count(db) == before
        async with db.engine.connect() as conn:
            state = await conn.execute(text("SELECT state FROM tasks WHERE id = 'task_0001'"))
            assert state.scalar_one() == "queued"
    finally:
        await old.close()
        await new.close()


async def test_the_database_refuses_history_of_a_past_epoch(db: Database, pg_url: str) -> None:
    org = await _org(db)
    lease = _lease(pg_url, "a")
    try:
        epoch = await lease.try_take()
        assert epoch is not None
        journal = TaskJournal(db, epoch=epoch)
        journal.create(_row("task_0002", org), at=datetime.now(UTC))
        await journal.flush()
        await journal.close()
        insert = (
            "INSERT INTO task_events (task_id, from_state, to_state, at, detail, epoch) "
            "VALUES ('task_0002', 'queued', 'dispatched', now(), '', :epoch)"
        )
        with pytest.raises(Exception, match="deposed"):
            async with db.engine.begin() as conn:
                await conn.execute(text(insert), {"epoch": epoch - 1})
        async with db.engine.begin() as conn:  # the current epoch (and none) are taken
            await conn.execute(text(insert), {"epoch": epoch})
        async with db.engine.connect() as conn:
            epochs = await conn.execute(
                text("SELECT epoch FROM task_events WHERE task_id = 'task_0002' ORDER BY id")
            )
            assert [e for (e,) in epochs] == [epoch, epoch]
    finally:
        await lease.close()


async def test_a_fenced_database_refuses_writes_once_the_lease_is_lost(
    db: Database, pg_url: str
) -> None:
    lease = _lease(pg_url, "a")
    fenced = Database(pg_url, fence=lease.valid)
    try:
        assert await lease.try_take() is not None
        async with fenced.engine.begin() as conn:
            await conn.execute(text("UPDATE leader_lease SET api_url = 'http://a2' WHERE id = 1"))
        lease.lose()
        async with fenced.engine.connect() as conn:  # reads still work
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        with pytest.raises(Deposed):
            async with fenced.engine.begin() as conn:
                await conn.execute(text("UPDATE leader_lease SET api_url = 'x' WHERE id = 1"))
    finally:
        await fenced.close()
        await lease.close()


async def test_replicas_starting_together_migrate_one_after_the_other(pg_url: str) -> None:
    databases = [Database(pg_url) for _ in range(3)]
    try:
        await asyncio.gather(*(d.start() for d in databases))
    finally:
        for d in databases:
            await d.close()


async def _end_sessions(db: Database, application_name: str) -> None:
    async with db.engine.connect() as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name AND pid <> pg_backend_pid()"
            ),
            {"name": application_name},
        )


async def _statement_running(db: Database, application_name: str) -> bool:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = :name AND query LIKE 'SELECT pg_sleep%'"
            ),
            {"name": application_name},
        )
        return int(rows.scalar_one()) == 1


@pytest.mark.parametrize("deposed", [True, False])
async def test_a_statement_whose_session_is_ended_mid_way_fails_in_the_error_tree(
    db: Database, pg_url: str, deposed: bool
) -> None:
    """A request in flight on a leader whose sessions the new leader ends: its statement fails
    as :class:`Deposed` (nothing of it committed: the API answers 503 ``deposed`` and a standby
    sends it again), or :class:`Unavailable` while the lease still holds — never a raw driver
    error the API would answer 500."""
    lease = _lease(pg_url, "a")
    fenced = Database(pg_url, application_name="corral:a", fence=lease.valid)
    try:
        assert await lease.try_take() is not None

        async def in_flight() -> None:
            async with fenced.engine.begin() as conn:
                await conn.execute(text("SELECT pg_sleep(60)"))

        request = asyncio.ensure_future(in_flight())
        await eventually(
            lambda: _statement_running(db, "corral:a"), timeout=60, message="statement runs"
        )
        if deposed:
            lease.lose()
        await _end_sessions(db, "corral:a")
        with pytest.raises(Unavailable) as caught:
            await request
        assert isinstance(caught.value, Deposed) is deposed, caught.value
        # the pool recovers: the next statement gets a new session
        async with fenced.engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await fenced.close()
        await lease.close()


async def test_a_journal_transaction_holds_up_a_takeover_but_not_a_renewal(
    db: Database, pg_url: str
) -> None:
    """The journal's fencing read (the lease row ``FOR KEY SHARE``) makes a takeover wait for
    the transaction, so its transitions are committed before the new leader reads the store;
    the leader's renewals do not wait for it, so a busy journal never costs the lease."""
    import asyncpg  # type: ignore[import-untyped]  # no stubs

    from corral.store.journal_writers import _PG_EPOCH

    # a long lease: the takeover's statement may wait for the journal as long as the test needs
    a, b = _lease(pg_url, "a"), _lease(pg_url, "b", lease_seconds=120)
    journal = await asyncpg.connect(asyncpg_url(pg_url))
    try:
        epoch = await a.try_take()
        assert epoch is not None
        transaction = journal.transaction()
        await transaction.start()
        assert await journal.fetchval(_PG_EPOCH) == epoch
        await a.renew()  # refused by its timeout (Unavailable) if it waited for the journal
        assert a.valid()
        await a.close()  # the advisory lock is free: b takes over, once the journal commits
        taking = asyncio.ensure_future(b.try_take())

        async def waiting() -> bool:
            async with db.engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE application_name = 'corral:b' AND wait_event_type = 'Lock'"
                    )
                )
                return rows.scalar_one() == 1 and not taking.done()

        await eventually(waiting, timeout=60, message="the takeover waits for the journal")
        await transaction.commit()
        assert await taking == epoch + 1
    finally:
        await journal.close()
        await a.close()
        await b.close()


async def test_a_standby_waiting_for_the_lock_takes_it_when_the_holder_lets_go(
    db: Database, pg_url: str
) -> None:
    a, b = _lease(pg_url, "a"), _lease(pg_url, "b")
    try:
        first = await a.try_take()
        assert first is not None
        assert await b.try_take(wait=0.1) is None  # still held: the wait ran out
        # the wait's lock_timeout is gone with it: a takeover's UPDATE waits as long as it must
        assert (await b._run("SHOW lock_timeout"))[0][0] == "0"
        waiting = asyncio.ensure_future(b.try_take(wait=60))
        await eventually(
            lambda: _waiting_for_the_lock(db), timeout=30, message="b waits in the database"
        )
        # meanwhile b reads the row on a connection of its own (a standby forwarding a
        # request does not wait for its campaign's lock wait, here up to 60 s)
        current = await asyncio.wait_for(b.leader(), timeout=30)
        assert current is not None and current.holder == "a" and not waiting.done()
        await a.close()  # the session ends: the database hands the lock to b
        assert await waiting == first + 1
        assert (await b._run("SHOW lock_timeout"))[0][0] == "0"
    finally:
        await a.close()
        await b.close()


async def _waiting_for_the_lock(db: Database) -> bool:
    async with db.engine.connect() as conn:
        waits = await conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'corral:b' "
                "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
            )
        )
        return bool(waits.scalar_one())
