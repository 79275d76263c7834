"""Big payloads and results: what travels by reference through an org's object store.

A task message must fit in one message of the org's bus (its plan's ``maxPayload``). What
does not — a payload submitted through the API, a handler's result, a delegation's payload —
is kept as an object in the org's own object store (a JetStream object store in the org's own
account, counted against its JetStream storage, never in PLATFORM's) and the message carries
an :class:`ObjectRef` in its place: ``{"corral.object": {"name", "size", "digest"}}``. The
SDK and the API replace a reference with what it names, so users see the document itself, up
to the plan's ``maxObjectBytes``; beyond it the document is refused with its size and the limit.

Objects are named after their task (``<task>/payload``, ``<task>/result.<attempt>``), their
chunks kept under ``$O.OBJECTS.C.<task>.<part>``: everything of one task can be deleted with
one purge of ``$O.OBJECTS.C.<task>.>`` and its few metadata subjects. The layout is NATS's own
object store format, so ``nats object get OBJECTS <name>`` reads them too.

Pure: names, shapes and size rules; the reading and writing is the SDK's and the bus's.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from corral.domain.errors import InvalidInput, TooLarge

__all__ = [
    "BUCKET",
    "CHUNK_BYTES",
    "DIGEST_PREFIX",
    "ENVELOPE",
    "REF_KEY",
    "STREAM",
    "ObjectRef",
    "chunk_size",
    "chunk_subject",
    "chunks_of_task",
    "inline_limit",
    "meta_subject",
    "payload_name",
    "reference_in",
    "result_name",
    "task_object_names",
    "too_large",
]

#: the bucket of every org (each org's account has its own)
BUCKET = "OBJECTS"
#: the JetStream stream that holds it
STREAM = f"OBJ_{BUCKET}"
#: the one key of a reference document
REF_KEY = "corral.object"
#: bytes kept free in a message around an inline document (ids, type, attempt)
ENVELOPE = 1024
#: the largest chunk of an object (half an org's message limit if that is smaller)
CHUNK_BYTES = 128 * 1024
DIGEST_PREFIX = "SHA-256="
_MAX_ATTEMPT_NAMES = 100  # result names deleted per task: attempts are capped well below


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What a message carries in place of a document kept in the object store."""

    name: str
    size: int
    digest: str

    def to_wire(self) -> dict[str, Any]:
        return {REF_KEY: {"name": self.name, "size": self.size, "digest": self.digest}}

    @classmethod
    def from_wire(cls, obj: Any) -> ObjectRef:
        """A reference from its wire shape.

        Raises:
            InvalidInput: not a reference, or one with a bad name, size or digest.
        """
        inner = obj.get(REF_KEY) if isinstance(obj, dict) and len(obj) == 1 else None
        if not isinstance(inner, dict):
            raise InvalidInput("not an object reference")
        name, size, digest = inner.get("name"), inner.get("size"), inner.get("digest")
        if not isinstance(name, str) or not _valid_name(name):
            raise InvalidInput(f"an object reference with a bad name: {name!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"an object reference with a bad size: {size!r}")
        if not isinstance(digest, str) or not digest.startswith(DIGEST_PREFIX):
            raise InvalidInput(f"an object reference with a bad digest: {digest!r}")
        return cls(name, size, digest)


def reference_in(doc: Any) -> ObjectRef | None:
    """The reference ``doc`` is, or None if it is a document of its own."""
    if not isinstance(doc, dict) or len(doc) != 1 or REF_KEY not in doc:
        return None
    try:
        return ObjectRef.from_wire(doc)
    except InvalidInput:
        return None


def payload_name(task_id: str) -> str:
    return f"{task_id}/payload"


def result_name(task_id: str, attempt: int) -> str:
    return f"{task_id}/result.{attempt}"


def task_object_names(task_id: str, attempts: int) -> list[str]:
    """Every name an object of ``task_id`` may have after ``attempts`` attempts."""
    last = max(1, min(attempts, _MAX_ATTEMPT_NAMES))
    return [payload_name(task_id)] + [result_name(task_id, a) for a in range(0, last + 1)]


def _valid_name(name: str) -> bool:
    task, sep, part = name.partition("/")
    ok = task.replace("_", "").isalnum() and part.replace(".", "").isalnum()
    return bool(sep) and ok and len(name) <= 200


def chunk_subject(name: str) -> str:
    """Where the chunks of the object ``name`` are kept: one subject token per part."""
    return f"$O.{BUCKET}.C.{name.replace('/', '.')}"


def chunks_of_task(task_id: str) -> str:
    """The subjects of every chunk of every object of ``task_id``."""
    return f"$O.{BUCKET}.C.{task_id}.>"


def meta_subject(name: str) -> str:
    """Where the object's metadata is kept (NATS's layout: the name in URL-safe base64)."""
    return f"$O.{BUCKET}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


def chunk_size(max_payload: int) -> int:
    """The chunk size of objects in an org whose messages carry at most ``max_payload``."""
    return max(1024, min(CHUNK_BYTES, max_payload // 2))


def inline_limit(max_payload: int) -> int:
    """The largest document sent inline in a message of at most ``max_payload`` bytes."""
    return max(0, max_payload - ENVELOPE)


def too_large(what: str, size: int, limit: int) -> TooLarge:
    """The error for a ``what`` (e.g. ``"the result of task_…"``) of ``size`` bytes."""
    return TooLarge(
        f"{what} is {size} bytes, over the maximum of {limit} bytes "
        f"({limit / (1024 * 1024):g} MiB) this organization's tasks may carry; keep larger data "
        "elsewhere and pass a reference to it",
        details={"size": size, "limit": limit},
    )
