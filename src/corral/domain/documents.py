"""How deep a JSON document may nest, checked without recursion.

Why: a payload nested a thousand deep is a few kilobytes, passes every size limit, and then
breaks whatever later walks it recursively (the standard library's decoder and encoder, a
database driver, a template) with ``RecursionError`` — far from where it came in, and long
after it was stored. Every place JSON enters (the API, messages from agents) checks the depth
first, with the same bound, and refuses what is deeper with :class:`InvalidInput`.
"""

from __future__ import annotations

from typing import Any

from corral.domain.errors import InvalidInput

__all__ = ["MAX_DEPTH", "check_depth", "check_raw_depth", "depth", "openings"]

#: how deep any JSON document coming into Corral may nest (objects and arrays)
MAX_DEPTH = 64

_OPEN, _CLOSE, _QUOTE = frozenset(b"[{"), frozenset(b"]}"), ord('"')
#: every byte but the ones that matter to nesting, for ``bytes.translate``
_NOISE = bytes(b for b in range(256) if b not in b'[]{}"')


def depth(value: Any) -> int:
    """The nesting depth of a decoded JSON value: 0 for a scalar, 1 for ``[]`` or ``{}``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def openings(text: str | bytes) -> int:
    """How many arrays and objects the JSON text could open at most (brackets in strings
    count too), at C speed: a text with no more than a depth's worth cannot nest deeper."""
    if isinstance(text, str):
        return text.count("[") + text.count("{")
    return text.count(b"[") + text.count(b"{")


def check_depth(value: Any, *, what: str, limit: int = MAX_DEPTH) -> None:
    """Raise :class:`InvalidInput` if ``value`` nests deeper than ``limit``."""
    found = depth(value)
    if found > limit:
        raise InvalidInput(
            f"{what} nests {found} levels deep; at most {limit} are allowed",
            details={"depth": found, "limit": limit},
        )


def check_raw_depth(data: bytes, *, what: str, limit: int = MAX_DEPTH) -> None:
    """Raise :class:`InvalidInput` if the JSON text ``data`` nests deeper than ``limit``,
    before anything decodes it (a decoder may recurse once per level). Brackets inside
    strings do not count; malformed text is left for the decoder to refuse."""
    if openings(data) <= limit:
        return  # cannot nest deeper than it has brackets: the common case
    # Escaped backslashes, then escaped quotes, go first: what is left of a string is a
    # quote, any brackets, a quote.
    skeleton = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOISE)
    level = 0
    in_string = False
    for byte in skeleton:
        if byte == _QUOTE:
            in_string = not in_string
        elif in_string:
            continue
        elif byte in _OPEN:
            level += 1
            if level > limit:
                raise InvalidInput(
                    f"{what} nests more than {limit} levels deep",
                    details={"limit": limit},
                )
        elif byte in _CLOSE:
            level -= 1
