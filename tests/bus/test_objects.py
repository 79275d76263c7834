"""Each org's object store, on a real nats-server: in the org's own account, sized by its plan,
read and written by its agents within their permissions, invisible to every other org, and
deleted with its tasks and with the org."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nats.errors
import pytest

from corral.bus import PlatformBus
from corral.domain import objects
from corral.domain.errors import NotFound, QuotaExceeded, TooLarge
from corral.sdk import objects as object_io
from tests.bus.conftest import LIMITS, Connect, MiB
from tests.support import eventually

WITH_OBJECTS = dataclasses.replace(LIMITS, jetstream_storage=40 * MiB, objects_max_bytes=4 * MiB)


@pytest.fixture
async def stores(bus: PlatformBus) -> PlatformBus:
    for org in ("a", "b"):
        await bus.ensure_org(org, WITH_OBJECTS)
    return bus


async def test_the_control_plane_and_an_agent_of_the_org_share_its_store(
    stores: PlatformBus, connect: Connect
) -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB: ten chunks
    ref = await stores.objects.put("a", objects.payload_name("task_1"), data)
    assert ref.size == len(data)
    a1 = await connect(stores.mint_agent_creds("a", "a1", ttl_seconds=60))
    js = a1.nc.jetstream()
    assert await object_io.get(js, ref, limit=len(data)) == data
    with pytest.raises(TooLarge):  # over what the reader takes: refused before it is read
        await object_io.get(js, ref, limit=len(data) - 1)
    mine = await object_io.put(js, objects.result_name("task_1", 1), b"r" * 300_000)
    assert await stores.objects.get("a", mine, limit=mine.size) == b"r" * 300_000
    a1.violations.check()  # nothing the agent did was refused


async def test_another_orgs_agent_reads_nothing_and_writes_only_into_its_own_store(
    stores: PlatformBus, connect: Connect
) -> None:
    ref = await stores.objects.put("a", objects.payload_name("task_2"), b"secret" * 100_000)
    b1 = await connect(stores.mint_agent_creds("b", "b1", ttl_seconds=60))
    js = b1.nc.jetstream()
    with pytest.raises(NotFound):
        await object_io.get(js, ref, limit=ref.size)
    # the same name written by b lands in b's store; a's object is untouched
    forged = await object_io.put(js, ref.name, b"forged")
    assert await stores.objects.get("b", forged, limit=forged.size) == b"forged"
    assert await stores.objects.get("a", ref, limit=ref.size) == b"secret" * 100_000


async def test_an_agent_cannot_purge_or_delete_its_orgs_store(
    stores: PlatformBus, connect: Connect
) -> None:
    ref = await stores.objects.put("a", objects.payload_name("task_3"), b"keep" * 1000)
    a1 = await connect(stores.mint_agent_creds("a", "a1", ttl_seconds=60))
    js = a1.nc.jetstream(timeout=1.0)
    for attempt in (js.purge_stream(objects.STREAM), js.delete_stream(objects.STREAM)):
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await attempt
    await eventually(lambda: bool(a1.violations.pending), message="a permissions violation")
    assert await stores.objects.get("a", ref, limit=ref.size) == b"keep" * 1000


async def test_a_full_store_refuses_a_put_with_quota_exceeded(stores: PlatformBus) -> None:
    with pytest.raises(QuotaExceeded):
        await stores.objects.put("a", objects.payload_name("task_4"), b"f" * (5 * MiB))


async def test_deleting_a_tasks_objects_and_the_org_removes_them(
    stores: PlatformBus, tmp_path: Path
) -> None:
    kept = await stores.objects.put("a", objects.payload_name("task_6"), b"k" * 200_000)
    doomed = [
        await stores.objects.put("a", objects.payload_name("task_5"), b"p" * 200_000),
        await stores.objects.put("a", objects.result_name("task_5", 2), b"r" * 200_000),
    ]
    await stores.objects.delete_tasks("a", [("task_5", 2)])
    for ref in doomed:
        with pytest.raises(NotFound):
            await stores.objects.get("a", ref, limit=ref.size)
    assert len(await stores.objects.get("a", kept, limit=kept.size)) == 200_000
    account = stores.authority.org_account("a")
    kept_on_disk = (
        tmp_path / "nats" / "jetstream" / "jetstream" / account / "streams" / objects.STREAM
    )
    assert kept_on_disk.is_dir()  # in the org's own account, on the server's disk
    await stores.remove_org("a")
    assert not kept_on_disk.exists()


async def test_a_plan_without_objects_keeps_no_store(bus: PlatformBus) -> None:
    await bus.ensure_org("a", LIMITS)
    with pytest.raises(NotFound):
        await bus.objects.put("a", objects.payload_name("task_7"), b"x")


async def test_an_org_with_small_messages_stores_objects_in_smaller_chunks(
    bus: PlatformBus, connect: Connect
) -> None:
    small = dataclasses.replace(WITH_OBJECTS, max_payload=32 * 1024)
    await bus.ensure_org("a", small)
    data = b"s" * 1_000_000
    ref = await bus.objects.put("a", objects.payload_name("task_8"), data)
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    js = a1.nc.jetstream()
    assert await object_io.get(js, ref, limit=ref.size) == data
    chunk = objects.chunk_size(small.max_payload)
    assert chunk == 16 * 1024
    mine = await object_io.put(js, objects.result_name("task_8", 1), data, chunk=chunk)
    assert await bus.objects.get("a", mine, limit=mine.size) == data


async def test_deleting_one_object_leaves_the_tasks_others(stores: PlatformBus) -> None:
    first = await stores.objects.put("a", objects.result_name("task_9", 1), b"1" * 300_000)
    second = await stores.objects.put("a", objects.result_name("task_9", 2), b"2" * 300_000)
    await stores.objects.delete("a", first.name)
    with pytest.raises(NotFound):
        await stores.objects.get("a", first, limit=first.size)
    assert await stores.objects.get("a", second, limit=second.size) == b"2" * 300_000


async def test_objects_are_in_nats_own_object_store_format(
    stores: PlatformBus, connect: Connect
) -> None:
    data = b"n" * 400_000
    ref = await stores.objects.put("a", objects.payload_name("task_10"), data)
    admin = await connect(stores.authority.mint_org_admin_creds("a"), name="a-admin")
    store = await admin.nc.jetstream().object_store(objects.BUCKET)
    got = await store.get(ref.name)  # nats-py's own reader
    assert got.data == data and got.info.digest == ref.digest
