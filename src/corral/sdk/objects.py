"""Reading and writing documents in the org's object store (see :mod:`corral.domain.objects`).

An object is written as NATS's object store writes one — chunks, then a metadata message —
with differences that keep an agent's permissions small and an object write-once: its chunks
are kept under a subject named after the object (``$O.OBJECTS.C.<task>.<part>``), and it is
read back with direct gets of one chunk at a time rather than through a consumer. Every
message of a put says which message it expects last on its subject (none, for the first chunk
and the metadata; the previous chunk, for the next), so the server refuses a put of a name
already written, or one another writer interleaved with, and no rollup is allowed: nothing an
agent writes replaces or removes what another wrote (agents may not purge either). A reader
takes the *first* metadata and chunks of a name — what its first writer put — and checks them
against the digest of its reference. The control plane (:mod:`corral.bus.objects`) uses the
same code.

Writes are paced below the org's ingress budget (:class:`Pacer`): the platform takes an agent
that publishes faster than its org's plan allows off the bus, and a large result must not.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext

from corral.domain import objects
from corral.domain.errors import Conflict, CorralError, NotFound, QuotaExceeded, Unavailable
from corral.domain.objects import ObjectRef

__all__ = ["Pacer", "get", "put"]

#: the stream refused a message because it is full (discard new)
_FULL_CODES = frozenset({10047, 10077, 10002, 10028})
#: the stream refused a message whose subject did not end where it expected
_WRONG_LAST_SEQUENCE = 10071
_EXPECT_LAST = "Nats-Expected-Last-Subject-Sequence"


class Pacer:
    """A token bucket over bytes: a burst of ``rate`` bytes at once, then ``rate / 2`` bytes a
    second, half of the budget it guards (the rest is for everything else the org sends)."""

    def __init__(self, rate: int) -> None:
        self._capacity = float(max(1, rate))
        self._refill = self._capacity / 2
        self._tokens = self._capacity
        self._at = time.monotonic()

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._refill)
        self._at = now
        self._tokens -= n
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self._refill)


def _translate(exc: Exception, what: str) -> CorralError:
    if isinstance(exc, nats.js.errors.NotFoundError):
        return NotFound(f"{what}: not in this organization's object store")
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return NotFound(f"{what}: this organization keeps no object store (its plan's)")
    if isinstance(exc, nats.js.errors.APIError) and exc.err_code == _WRONG_LAST_SEQUENCE:
        return Conflict(
            f"{what}: this name was written already; objects are write-once",
            details={"resource": "objects"},
        )
    if isinstance(exc, nats.js.errors.APIError) and (
        exc.err_code in _FULL_CODES or "maximum bytes" in str(exc.description or "")
    ):
        return QuotaExceeded(
            f"{what}: this organization's object store is full (its plan's objectsMaxBytes); "
            "objects are deleted with their tasks",
            details={"resource": "objects"},
        )
    return Unavailable(f"{what}: {type(exc).__name__} {exc}".strip())


async def put(
    js: JetStreamContext,
    name: str,
    data: bytes,
    *,
    chunk: int = objects.CHUNK_BYTES,
    pacer: Pacer | None = None,
) -> ObjectRef:
    """Keep ``data`` as the object ``name`` of the org's object store, once: a name is
    written by one put only.

    A put of the very content the name holds already (the same handler's result put again)
    succeeds with the existing object.

    Raises:
        Conflict: something else was written under this name before (or during) this put.
        QuotaExceeded: the org's object store is full.
        Unavailable: the bus did not take it.
    """
    digest = (
        objects.DIGEST_PREFIX + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    )
    try:
        return await _put(js, name, data, digest, chunk=chunk, pacer=pacer)
    except Conflict:
        ref = ObjectRef(name, len(data), digest)
        try:
            if await get(js, ref, limit=len(data)) == data:
                return ref
        except CorralError:
            pass
        raise


async def _put(
    js: JetStreamContext,
    name: str,
    data: bytes,
    digest: str,
    *,
    chunk: int,
    pacer: Pacer | None,
) -> ObjectRef:
    what = f"storing {name}"
    subject = objects.chunk_subject(name)
    count, last = 0, 0
    try:
        for start in range(0, len(data), chunk):
            piece = data[start : start + chunk]
            if pacer is not None:
                await pacer.take(len(piece))
            ack = await js.publish(
                subject, piece, stream=objects.STREAM, headers={_EXPECT_LAST: str(last)}
            )
            last = ack.seq
            count += 1
        info = {
            "name": name,
            "bucket": objects.BUCKET,
            "nuid": subject.removeprefix(f"$O.{objects.BUCKET}.C."),
            "size": len(data),
            "chunks": count,
            "digest": digest,
            "mtime": datetime.now(UTC).isoformat(),
            "options": {"max_chunk_size": chunk},
        }
        await js.publish(
            objects.meta_subject(name),
            json.dumps(info).encode(),
            stream=objects.STREAM,
            headers={_EXPECT_LAST: "0"},
        )
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        raise _translate(exc, what) from exc
    return ObjectRef(name, len(data), digest)


async def get(js: JetStreamContext, ref: ObjectRef, *, limit: int) -> bytes:
    """The content of the object ``ref`` names — what the name's first writer put — checked
    against its digest.

    Raises:
        TooLarge: it is larger than ``limit`` bytes.
        NotFound: the org's object store does not hold it (deleted, or another org's name).
        InvalidInput: its content does not match its digest.
        Unavailable: the bus did not answer.
    """
    what = f"reading {ref.name}"
    if ref.size > limit:
        raise objects.too_large(f"object {ref.name}", ref.size, limit)
    subject = objects.chunk_subject(ref.name)
    try:
        meta = await js.get_msg(
            objects.STREAM, 1, subject=objects.meta_subject(ref.name), next=True, direct=True
        )
        info = json.loads(meta.data or b"{}")
        if info.get("deleted") or info.get("digest") != ref.digest:
            raise nats.js.errors.NotFoundError
        parts: list[bytes] = []
        seq, size = 0, 0
        for _ in range(int(info.get("chunks") or 0)):
            msg = await js.get_msg(objects.STREAM, seq + 1, subject=subject, next=True, direct=True)
            parts.append(msg.data or b"")
            seq, size = int(msg.seq or seq + 1), size + len(parts[-1])
            if size > ref.size:  # never hold more than the reference says
                break
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        raise _translate(exc, what) from exc
    data = b"".join(parts)
    digest = (
        objects.DIGEST_PREFIX + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    )
    if len(data) != ref.size or digest != ref.digest:
        raise NotFound(f"{what}: its content does not match its reference")
    return data
