"""What the store decodes from a JSON column: nothing deeper than documents allow, however
the text is written, and shallow text at once."""

from __future__ import annotations

import orjson

from corral.domain.documents import MAX_DEPTH
from corral.store.db import Unreadable, load_json


def test_a_shallow_value_loads_and_a_deep_one_is_unreadable_as_text_or_bytes() -> None:
    shallow = '{"env": {"A": "1"}, "command": ["run", "it"]}'
    assert load_json(shallow) == {"env": {"A": "1"}, "command": ["run", "it"]}
    assert load_json(shallow.encode()) == load_json(shallow)
    at_limit = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_json(at_limit) is not None and not isinstance(load_json(at_limit), Unreadable)
    deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    for text in (deep, deep.encode()):
        assert isinstance(load_json(text), Unreadable)


def test_many_brackets_in_a_flat_value_do_not_make_it_deep() -> None:
    flat = {f"k{n}": "[{" * 50 for n in range(20)}  # brackets inside strings only
    wide = [[n] for n in range(500)]  # many arrays, two levels
    for value in (flat, wide):
        assert load_json(orjson.dumps(value)) == value
