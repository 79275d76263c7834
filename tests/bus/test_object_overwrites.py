"""Objects are write-once, on a real nats-server: an agent of the org cannot replace, bury or
remove another task's object (the first write of a name is the one read, and a second put of
it is refused), and another org's agent changes nothing in the org's store by any name."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json

import nats.errors
import nats.js.errors
import pytest

from corral.bus import PlatformBus
from corral.bus.objects import ensure_objects, objects_config
from corral.domain import objects
from corral.domain.errors import Conflict, NotFound
from corral.domain.objects import ObjectRef
from corral.sdk import objects as object_io
from tests.bus.conftest import LIMITS, Connect, MiB, Peer

WITH_OBJECTS = dataclasses.replace(LIMITS, jetstream_storage=40 * MiB, objects_max_bytes=4 * MiB)
ORIGINAL = b"the result of task_1, attempt 1 " * 20_000  # 640 KB: five chunks


@pytest.fixture
async def stores(bus: PlatformBus) -> PlatformBus:
    for org in ("a", "b"):
        await bus.ensure_org(org, WITH_OBJECTS)
    return bus


async def _admin(stores: PlatformBus, connect: Connect, org: str) -> Peer:
    return await connect(stores.authority.mint_org_admin_creds(org), name=f"{org}-admin")


def _forged_meta(name: str, data: bytes, **extra: object) -> bytes:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    info = {
        "name": name,
        "bucket": objects.BUCKET,
        "nuid": objects.chunk_subject(name).removeprefix(f"$O.{objects.BUCKET}.C."),
        "size": len(data),
        "chunks": 1,
        "digest": objects.DIGEST_PREFIX + digest,
        **extra,
    }
    return json.dumps(info).encode()


async def test_a_second_put_of_a_name_is_refused_even_from_an_agent_of_the_same_org(
    stores: PlatformBus, connect: Connect
) -> None:
    name = objects.result_name("task_1", 1)
    a1 = await connect(stores.mint_agent_creds("a", "a1", ttl_seconds=60), name="a1")
    a2 = await connect(stores.mint_agent_creds("a", "a2", ttl_seconds=60), name="a2")
    ref = await object_io.put(a1.nc.jetstream(), name, ORIGINAL, chunk=128 * 1024)
    for writer in (a2.nc.jetstream(), a1.nc.jetstream()):  # the other agent, or its own again
        with pytest.raises(Conflict, match="write-once"):
            await object_io.put(writer, name, b"forged")
    # the very same content put again (a handler's result sent twice) is the same object
    assert await object_io.put(a1.nc.jetstream(), name, ORIGINAL, chunk=128 * 1024) == ref
    with pytest.raises(Conflict):  # the control plane's put goes by the same rule
        await stores.objects.put("a", name, b"forged")
    assert await object_io.get(a2.nc.jetstream(), ref, limit=ref.size) == ORIGINAL
    assert await stores.objects.get("a", ref, limit=ref.size) == ORIGINAL


async def test_raw_publishes_of_an_agent_neither_replace_nor_bury_another_tasks_object(
    stores: PlatformBus, connect: Connect
) -> None:
    name = objects.result_name("task_1", 1)
    ref = await stores.objects.put("a", name, ORIGINAL)
    a2 = await connect(stores.mint_agent_creds("a", "a2", ttl_seconds=60), name="a2")
    js = a2.nc.jetstream()
    forged = b"forged"
    meta, chunks = objects.meta_subject(name), objects.chunk_subject(name)
    # a rollup would purge the subject's earlier messages: the store allows none
    for subject, body in ((meta, _forged_meta(name, forged)), (chunks, forged)):
        with pytest.raises(nats.js.errors.APIError):
            await js.publish(subject, body, stream=objects.STREAM, headers={"Nats-Rollup": "sub"})
    # plain appends (no expectation) are taken, but a reader reads what the first writer put
    await js.publish(chunks, forged, stream=objects.STREAM)
    await js.publish(meta, _forged_meta(name, forged), stream=objects.STREAM)
    await js.publish(meta, _forged_meta(name, ORIGINAL, deleted=True), stream=objects.STREAM)
    assert await object_io.get(js, ref, limit=ref.size) == ORIGINAL
    assert await stores.objects.get("a", ref, limit=ref.size) == ORIGINAL
    # and what the forger would hand out as a reference to its data names nothing readable
    digest = json.loads(_forged_meta(name, forged))["digest"]
    fake = ObjectRef(name, len(forged), digest)
    with pytest.raises(NotFound):
        await object_io.get(js, fake, limit=fake.size)


async def test_a_name_taken_before_its_owner_writes_fails_the_owners_put(
    stores: PlatformBus, connect: Connect
) -> None:
    name = objects.result_name("task_2", 1)
    squatter = await connect(stores.mint_agent_creds("a", "a2", ttl_seconds=60), name="a2")
    await squatter.nc.jetstream().publish(
        objects.chunk_subject(name), b"squatted", stream=objects.STREAM
    )
    owner = await connect(stores.mint_agent_creds("a", "a1", ttl_seconds=60), name="a1")
    with pytest.raises(Conflict, match="written already"):
        await object_io.put(owner.nc.jetstream(), name, b"mine" * 1000)


async def test_a_store_made_allowing_rollups_is_brought_to_write_once(
    stores: PlatformBus, connect: Connect
) -> None:
    admin = await _admin(stores, connect, "a")
    js = admin.nc.jetstream()
    await js.update_stream(
        dataclasses.replace(objects_config(WITH_OBJECTS), allow_rollup_hdrs=True)
    )
    await ensure_objects(js, WITH_OBJECTS)
    assert (await js.stream_info(objects.STREAM)).config.allow_rollup_hdrs is False


async def test_another_orgs_agent_changes_nothing_in_the_orgs_store_by_any_name(
    stores: PlatformBus, connect: Connect
) -> None:
    ref = await stores.objects.put("a", objects.result_name("task_3", 1), ORIGINAL)
    admin = await _admin(stores, connect, "a")
    before = (await admin.nc.jetstream().stream_info(objects.STREAM)).state
    b1 = await connect(stores.mint_agent_creds("b", "b1", ttl_seconds=60), name="b1")
    js = b1.nc.jetstream(timeout=1.0)
    names = [ref.name, objects.payload_name("task_3"), objects.result_name("task_3", 2)]
    for name in names:  # every put lands in b's own store
        mine = await object_io.put(js, name, b"from b")
        assert await stores.objects.get("b", mine, limit=mine.size) == b"from b"
    a_account = stores.authority.org_account("a")
    for subject in (  # raw subjects, with a's name and account spelled out, and the JS API
        objects.chunk_subject(ref.name),
        objects.meta_subject(ref.name),
        f"$O.{objects.BUCKET}.C.task_3.>",
        f"{a_account}.$O.{objects.BUCKET}.C.task_3.result.1",
        f"$JS.API.STREAM.PURGE.{objects.STREAM}",
        f"$JS.API.STREAM.MSG.DELETE.{objects.STREAM}",
        f"$JS.API.DIRECT.GET.{objects.STREAM}.{objects.meta_subject(ref.name)}",
    ):
        # refused by its permissions, or nobody in its own account answers, or b's store does
        with contextlib.suppress(nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await b1.nc.request(subject, b'{"seq": 1}', timeout=1.0)
    await b1.nc.flush()
    after = (await admin.nc.jetstream().stream_info(objects.STREAM)).state
    assert (after.messages, after.last_seq, after.bytes) == (
        before.messages,
        before.last_seq,
        before.bytes,
    )
    assert await stores.objects.get("a", ref, limit=ref.size) == ORIGINAL
