"""References to the object store, object names and the plans' maxima."""

from __future__ import annotations

import pytest

from corral.domain import objects
from corral.domain.errors import InvalidInput, TooLarge
from corral.domain.objects import ObjectRef
from corral.domain.plans import PLANS, plan_from_wire

MiB = 1024 * 1024


def test_a_reference_goes_through_the_wire_unchanged() -> None:
    ref = ObjectRef("task_0a1b/result.2", 2_000_011, "SHA-256=abc")
    assert ObjectRef.from_wire(ref.to_wire()) == ref
    assert objects.reference_in(ref.to_wire()) == ref


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"corral.object": {"name": "t/payload", "size": 1, "digest": "SHA-256=x"}, "more": 1},
        {"corral.object": {"name": "../etc", "size": 1, "digest": "SHA-256=x"}},
        {"corral.object": {"name": "t/a b", "size": 1, "digest": "SHA-256=x"}},
        {"corral.object": {"name": "t/payload", "size": -1, "digest": "SHA-256=x"}},
        {"corral.object": {"name": "t/payload", "size": True, "digest": "SHA-256=x"}},
        {"corral.object": {"name": "t/payload", "size": 1, "digest": "MD5=x"}},
        {"corral.object": "t/payload"},
        {"blob": "x"},
    ],
)
def test_anything_else_is_a_document_of_its_own(doc: dict[str, object]) -> None:
    assert objects.reference_in(doc) is None
    with pytest.raises(InvalidInput):
        ObjectRef.from_wire(doc)


def test_every_object_of_a_task_is_under_one_subject_prefix() -> None:
    names = objects.task_object_names("task_1", attempts=3)
    assert names == [
        "task_1/payload",
        "task_1/result.0",
        "task_1/result.1",
        "task_1/result.2",
        "task_1/result.3",
    ]
    prefix = objects.chunks_of_task("task_1").removesuffix(">")
    assert all(objects.chunk_subject(n).startswith(prefix) for n in names)
    assert objects.chunk_subject("task_1/result.1") == "$O.OBJECTS.C.task_1.result.1"
    assert objects.meta_subject("task_1/payload") == "$O.OBJECTS.M.dGFza18xL3BheWxvYWQ="


def test_too_large_names_the_size_and_the_limit() -> None:
    error = objects.too_large("the result of task_1", 9_000_011, 8 * MiB)
    assert isinstance(error, TooLarge) and error.http_status == 413
    assert "9000011 bytes" in error.message and "8388608 bytes (8 MiB)" in error.message
    assert error.details == {"size": 9_000_011, "limit": 8 * MiB}


def test_the_plans_maxima_and_what_a_plan_without_an_object_store_carries() -> None:
    maxima = {name: PLANS[name].max_document_bytes for name in ("free", "standard", "enterprise")}
    assert maxima == {"free": 8 * MiB, "standard": 64 * MiB, "enterprise": 256 * MiB}
    wire = PLANS["standard"].to_wire()
    assert wire["maxObjectBytes"] == 64 * MiB
    assert wire["bus"]["objectsMaxBytes"] == 128 * MiB  # type: ignore[index]
    custom = plan_from_wire(
        {"name": "lean", "maxObjectBytes": 2 * MiB, "bus": {"objectsMaxBytes": 0}}
    )
    assert custom.max_object_bytes == 2 * MiB
    assert custom.max_document_bytes == custom.bus.max_payload - objects.ENVELOPE  # one message
    bigger = plan_from_wire({"name": "big", "maxObjectBytes": 512 * MiB})
    assert bigger.max_document_bytes == bigger.bus.objects_max_bytes  # at most its store
