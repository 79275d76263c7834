"""Each org's object store, as the control plane keeps it: big payloads in, big results out.

The store is a JetStream object store named ``OBJECTS`` in the org's own account (stream
``OBJ_OBJECTS``, file storage, ``max_bytes`` from the plan's ``objectsMaxBytes``, discard new,
no rollups: objects are write-once, see :mod:`corral.sdk.objects`),
so what it holds counts against that org's JetStream reservation and nobody else's, and no
other account can name it. The control plane reaches it over its link in the org's account
(:mod:`corral.bus.links`): it puts the payloads too large for a bus message that come in
through the API, reads the results agents put there when the API is asked for them, and
deletes a task's objects when the task is pruned; deleting the org deletes the stream.
Agents read and write it with :mod:`corral.sdk.objects` (their permissions:
:func:`corral.bus.claims.agent_permissions`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from corral.bus.failures import translating
from corral.bus.links import OrgLinks
from corral.domain import objects
from corral.domain.objects import ObjectRef
from corral.domain.plans import BusLimits
from corral.sdk import objects as object_io

__all__ = ["ObjectStores", "ensure_objects", "objects_config"]

log = logging.getLogger(__name__)


def objects_config(limits: BusLimits, *, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=objects.STREAM,
        subjects=[f"$O.{objects.BUCKET}.C.>", f"$O.{objects.BUCKET}.M.>"],
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_bytes=limits.objects_max_bytes,
        max_msg_size=limits.max_payload,
        allow_rollup_hdrs=False,  # objects are write-once: nothing an agent sends removes one
        allow_direct=True,
        num_replicas=replicas,
    )


async def ensure_objects(js: JetStreamContext, limits: BusLimits, *, replicas: int = 1) -> None:
    """Create the org's object store, or bring it to its plan's size (``js`` is the org's);
    a plan without one (``objectsMaxBytes`` 0) keeps none."""
    config = objects_config(limits, replicas=replicas)
    try:
        have = (await js.stream_info(objects.STREAM)).config
    except NotFoundError:
        if limits.objects_max_bytes > 0:
            await js.add_stream(config)
        return
    if limits.objects_max_bytes <= 0:
        await js.delete_stream(objects.STREAM)
    elif (have.max_bytes, have.max_msg_size, have.allow_rollup_hdrs) != (
        config.max_bytes,
        config.max_msg_size,
        config.allow_rollup_hdrs,
    ):
        await js.update_stream(config)


class ObjectStores:
    """The object store of every org, over the control plane's links."""

    def __init__(self, links: OrgLinks, *, replicas: int = 1) -> None:
        self._links = links
        self._replicas = replicas
        #: awaited before an object is kept: the org's streams exist on return
        self.needed: Callable[[str], Awaitable[None]] | None = None

    async def ensure(self, org: str, limits: BusLimits) -> None:
        async with self._links.use(org) as link:
            with translating(f"creating the object store of {org!r}"):
                await ensure_objects(link.js, limits, replicas=self._replicas)

    async def put(self, org: str, name: str, data: bytes) -> ObjectRef:
        """Keep ``data`` as ``name`` in ``org``'s object store.

        Raises:
            QuotaExceeded: the store is full.
            NotFound: the org has no object store (its plan keeps none).
            Unavailable: the bus did not take it.
        """
        if self.needed is not None:
            await self.needed(org)
        limits = self._links.authority.limits(org)
        chunk = objects.chunk_size(limits.max_payload if limits else objects.CHUNK_BYTES)
        async with self._links.use(org) as link:
            return await object_io.put(link.js, name, data, chunk=chunk)

    async def get(self, org: str, ref: ObjectRef, *, limit: int) -> bytes:
        """The content of ``ref`` in ``org``'s object store (see :func:`corral.sdk.objects.get`)."""
        async with self._links.use(org) as link:
            return await object_io.get(link.js, ref, limit=limit)

    async def delete_tasks(self, org: str, tasks: list[tuple[str, int]]) -> None:
        """Delete every object of these ``(task id, attempts)``; what is gone already is fine."""
        for task_id, attempts in tasks:
            names = objects.task_object_names(task_id, attempts)
            chunks = [objects.chunks_of_task(task_id)]
            if not await self._purge(org, chunks + [objects.meta_subject(n) for n in names]):
                return  # the org keeps no object store

    async def delete(self, org: str, name: str) -> None:
        """Delete the object ``name``; gone already is fine."""
        await self._purge(org, [objects.chunk_subject(name), objects.meta_subject(name)])

    async def _purge(self, org: str, subjects: list[str]) -> bool:
        async with self._links.use(org) as link:
            for subject in subjects:
                with translating(f"deleting objects of {org!r}"):
                    try:
                        await link.js.purge_stream(objects.STREAM, subject=subject)
                    except NotFoundError:
                        return False
        return True
