"""JSON depth is bounded everywhere JSON comes in, without recursion."""

from __future__ import annotations

import json
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
