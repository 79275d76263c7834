"""One wire format: batches with a cap per direction, and errors read back into the tree."""

from __future__ import annotations

import pytest

from corral.domain import wire
from corral.domain.errors import (
    Conflict,
    CorralError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    Unavailable,
)
from corral.domain.messages import decode, encode


def _items(n: int) -> list[dict[str, object]]:
    return [{"taskId": f"task_{i}"} for i in range(n)]


def test_one_message_travels_as_itself_and_several_as_a_batch() -> None:
    assert wire.batch_to_wire(_items(1), cap=4) == {"taskId": "task_0"}
    assert wire.batch_to_wire(_items(3), cap=4) == {"batch": _items(3)}


@pytest.mark.parametrize("n", [1, 2, 64])
def test_joining_encoded_messages_is_encoding_the_batch(n: int) -> None:
    joined = wire.join_batch([encode(m) for m in _items(n)], cap=wire.INBOX_BATCH_MAX)
    assert joined == encode(wire.batch_to_wire(_items(n), cap=wire.INBOX_BATCH_MAX))
    if n > 1:
        size = sum(len(encode(m)) for m in _items(n)) + n - 1 + wire.BATCH_OVERHEAD
        assert len(joined) == size


@pytest.mark.parametrize("n", [1, 3, wire.INBOX_BATCH_MAX])
def test_a_batch_reads_back_as_its_messages_in_order(n: int) -> None:
    obj = decode(encode(wire.batch_to_wire(_items(n), cap=wire.INBOX_BATCH_MAX)))
    assert wire.batch_from_wire(obj, cap=wire.INBOX_BATCH_MAX) == _items(n)


def test_a_batch_over_its_cap_is_refused_by_writer_and_reader_alike() -> None:
    over = _items(wire.INBOX_BATCH_MAX + 1)
    with pytest.raises(InvalidInput, match="1 to 64 messages, not 65"):
        wire.batch_from_wire({"batch": over}, cap=wire.INBOX_BATCH_MAX)
    with pytest.raises(InvalidInput):
        wire.batch_to_wire(over, cap=wire.INBOX_BATCH_MAX)
    with pytest.raises(InvalidInput):
        wire.join_batch([encode(m) for m in over], cap=wire.INBOX_BATCH_MAX)


@pytest.mark.parametrize("batch", [[], "x", [1], {"taskId": "t"}])
def test_a_malformed_batch_is_invalid_input(batch: object) -> None:
    with pytest.raises(InvalidInput):
        wire.batch_from_wire({"batch": batch}, cap=wire.EVENTS_BATCH_MAX)


@pytest.mark.parametrize(
    "error",
    [
        InvalidInput("bad", details={"field": "x"}),
        NotFound("gone"),
        Conflict("no"),
        QuotaExceeded("full"),
        PermissionDenied("denied"),
        Unavailable("down"),
    ],
)
def test_an_error_reads_back_as_the_error_it_was(error: CorralError) -> None:
    back = wire.error_from_wire(decode(encode(error.to_wire())))
    assert type(back) is type(error)
    assert (back.message, back.details) == (error.message, error.details)


def test_a_rate_limit_keeps_its_retry_after() -> None:
    back = wire.error_from_wire(RateLimited("slow down", retry_after=2.5).to_wire())
    assert isinstance(back, RateLimited) and back.retry_after == 2.5


@pytest.mark.parametrize(
    "body", [{"error": {"code": "melted"}}, {"error": "x"}, {"error": None}, [], "x"]
)
def test_an_unknown_or_malformed_error_is_the_callers_fallback(body: object) -> None:
    assert type(wire.error_from_wire(body)) is CorralError
    back = wire.error_from_wire(body, fallback=PermissionDenied, message="denied")
    assert type(back) is PermissionDenied and back.message == "denied"


def test_only_a_reply_with_an_error_is_an_error() -> None:
    assert wire.is_error({"error": {}}) and not wire.is_error({"value": "x"})
    assert not wire.is_error([])
