"""Payloads and results too big for one bus message, kept in the org's object store.

The control plane's side of :mod:`corral.domain.objects`: a payload submitted through the API
that one message of the org's bus cannot carry is put in the org's object store before the task
is committed (and deleted again if the submit fails), so the task and its messages carry a
reference; ``GET`` of a task reads the objects its payload and result refer to and answers with
the documents themselves, so users never see a reference there (lists and server-sent events
keep the reference: they would otherwise read every object of a page). Objects of pruned tasks
are deleted by the retention pass (:mod:`corral.control.retention`), a result its task will
never have (a stopped or retried attempt's) when it arrives; deleting an org deletes its object
store with its account.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from corral.domain import objects
from corral.domain.errors import CorralError
from corral.domain.messages import decode, encode
from corral.domain.objects import ObjectRef
from corral.domain.tenancy import Organization

__all__ = ["Documents", "ObjectPort"]

log = logging.getLogger("corral.documents")


class ObjectPort(Protocol):
    """What the bus offers (:class:`corral.bus.objects.ObjectStores`)."""

    async def put(self, org: str, name: str, data: bytes) -> ObjectRef: ...

    async def get(self, org: str, ref: ObjectRef, *, limit: int) -> bytes: ...

    async def delete_tasks(self, org: str, tasks: list[tuple[str, int]]) -> None: ...

    async def delete(self, org: str, name: str) -> None: ...


class Documents:
    def __init__(
        self,
        stores: ObjectPort,
        org_by_id: Callable[[str], Awaitable[Organization]],
        spawn: Callable[[Coroutine[Any, Any, None], str], object],
    ) -> None:
        self._stores = stores
        self._org_by_id = org_by_id
        self._spawn = spawn  # runs a named background job whose failure is logged

    async def accept_payload(
        self, org: Organization, task_id: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """What to keep as the payload of a new task: ``payload`` itself, or a reference to it
        once put in the org's object store if one bus message cannot carry it.

        Raises:
            TooLarge: it is larger than the org's plan allows (``maxObjectBytes``).
            QuotaExceeded: the org's object store is full.
        """
        data = encode(payload)
        limit = org.plan.max_document_bytes
        if len(data) > limit:
            raise objects.too_large("the payload", len(data), limit)
        if len(data) <= objects.inline_limit(org.plan.bus.max_payload):
            return payload
        ref = await self._stores.put(org.slug, objects.payload_name(task_id), data)
        return ref.to_wire()

    async def discard(self, org: Organization, task_id: str) -> None:
        """Delete the objects of a task that was never created; logged, never raised."""
        try:
            await self._stores.delete_tasks(org.slug, [(task_id, 0)])
        except CorralError as exc:
            log.warning("the objects of %s were not deleted: %s", task_id, exc.message)

    async def resolve(self, org: Organization, doc: dict[str, Any] | None) -> Any:
        """``doc``, or the document it refers to; a reference whose object cannot be read
        stays as it is, with why (``unreadable``)."""
        ref = objects.reference_in(doc)
        if ref is None:
            return doc
        try:
            data = await self._stores.get(org.slug, ref, limit=org.plan.max_document_bytes)
            return decode(data)
        except CorralError as exc:
            log.warning("object %s of %s: %s", ref.name, org.slug, exc.message)
            assert doc is not None
            return {**doc, "unreadable": exc.message}

    async def forget_tasks(self, org_id: str, tasks: list[tuple[str, int]]) -> None:
        """Delete every object of these ``(task id, attempts)`` of the org ``org_id``.

        Raises:
            NotFound: the org is gone (its object store went with it).
        """
        org = await self._org_by_id(org_id)
        await self._stores.delete_tasks(org.slug, tasks)

    def forget_result(self, org_slug: str, task_id: str, attempt: int) -> None:
        """In the background: delete the result an attempt put in the object store that its
        task will never have (it was stopped, or retried)."""
        name = objects.result_name(task_id, attempt)
        self._spawn(self._stores.delete(org_slug, name), f"forget-{name}")
