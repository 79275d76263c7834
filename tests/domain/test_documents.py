"""JSON depth is bounded everywhere JSON comes in, without recursion."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from corral.domain import messages
from corral.domain.documents import MAX_DEPTH, check_depth, check_raw_depth, depth
from corral.domain.errors import InvalidInput


def nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_depth_counts_containers_not_scalars() -> None:
    assert depth(5) == 0
    assert depth({}) == 1
    assert depth({"a": [1, {"b": []}]}) == 4
    assert depth(nested(5000)) == 5000  # no recursion, however deep


@pytest.mark.parametrize("levels", [1, MAX_DEPTH])
def test_what_is_within_the_bound_passes(levels: int) -> None:
    check_depth(nested(levels), what="x")
    check_raw_depth(json.dumps(nested(levels)).encode(), what="x")


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 962, 200_000])
def test_what_is_deeper_is_refused_naming_the_limit(levels: int) -> None:
    raw = b"[" * levels + b"]" * levels
    with pytest.raises(InvalidInput, match=f"more than {MAX_DEPTH} levels"):
        check_raw_depth(raw, what="x")


def test_brackets_inside_strings_are_not_nesting() -> None:
    text = {"s": "[{" * 1000 + '\\"' + "\\\\" + "[" * 100, "t": ["]]]"]}
    check_raw_depth(json.dumps(text).encode(), what="x")


def test_a_deep_message_from_an_agent_is_invalid_input_not_a_crash() -> None:
    for levels in (MAX_DEPTH + 1, 1_000, 100_000):
        raw = b'{"a":' * levels + b"1" + b"}" * levels
        with pytest.raises(InvalidInput):
            messages.decode(raw)


def _document(rng: random.Random, levels: int) -> Any:
    """A random JSON value nesting exactly ``levels`` deep, its strings full of brackets,
    quotes and backslashes."""
    if levels == 0:
        return rng.choice([1, "[{", '\\"]', "\\\\[", '"{"', None, 2.5])
    inner = [_document(rng, rng.randrange(min(levels, 3))) for _ in range(rng.randrange(3))]
    inner.insert(rng.randrange(len(inner) + 1), _document(rng, levels - 1))
    if rng.random() < 0.5:
        return inner
    return {f"k{n}[{{": v for n, v in enumerate(inner)}


def test_the_bound_is_the_decoded_depth_for_any_document() -> None:
    rng = random.Random(7)
    for _ in range(300):
        levels = rng.randrange(1, MAX_DEPTH + 4)
        value = _document(rng, levels)
        assert depth(value) == levels
        raw = json.dumps([value] * rng.randrange(1, 4)).encode()  # wide as well as deep
        if levels + 1 <= MAX_DEPTH:
            check_raw_depth(raw, what="x")
        else:
            with pytest.raises(InvalidInput, match="more than"):
                check_raw_depth(raw, what="x")


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * (MAX_DEPTH + 1),  # never closed
        b'["' + b"[" * 100 + b"]" * 100 + b'", ' + b"[" * (MAX_DEPTH + 1),  # after a string
    ],
)
def test_malformed_text_that_opens_too_deep_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidInput, match="more than"):
        check_raw_depth(raw, what="x")


def test_malformed_text_within_the_bound_is_left_for_the_decoder() -> None:
    check_raw_depth(b'["' + b"[" * 100, what="x")  # in an unterminated string
    check_raw_depth(b"[" * 10 + b"]" * 200, what="x")
