"""What the two hostile agents share — the sandbox suite's (``tests/runtime/sandbox/hostile.py``)
and the independent end-to-end suite's (``tests/e2e/fresh_hostile_agent.py``): how an attempt's
outcome is recorded, and nothing else.

Each outcome is ``{"ok": bool, "detail": str}``: ``ok`` means the action succeeded (anything
but ``False`` returned) — a crossing, for an attempt; a requirement met, for a control — and
``detail`` is what it gave or raised. A broken recorder cannot hide a crossing from both suites
unnoticed: each suite's controls (``works_*``) must record success through it.

What each agent *tries* — the targets, the system calls and their numbers, how a harmful call
is confined to a child — stays in each agent, written separately: the fresh suite exists to
think of what the first did not, and a mistake shared by both (a wrong syscall number answers
ENOSYS, which looks exactly like a refusal) would blind both at once.

Standard library only: it is imported inside the sandbox, from this directory (each suite puts
it on the agent's ``PYTHONPATH`` and opens it read-only to the agent).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

__all__ = ["Attempt", "Outcomes", "recorder"]

Outcomes = dict[str, dict[str, object]]
#: ``attempt(name, action)``; ``action`` is called without arguments. Typed ``...``: a lambda
#: that binds a loop variable by a default (``lambda pid=pid: ...``) has a parameter, and mypy
#: cannot infer such a lambda against ``Callable[[], object]`` (python/mypy#15459)
Attempt = Callable[[str, Callable[..., object]], None]


def recorder(results: Outcomes, *, detail_chars: int = 200) -> Attempt:
    """``attempt(name, action)``: run ``action`` and record in ``results`` whether it
    succeeded and what it gave or raised (at most ``detail_chars`` of it)."""

    def attempt(name: str, action: Callable[[], object]) -> None:
        try:
            value = action()
            results[name] = {"ok": value is not False, "detail": repr(value)[:detail_chars]}
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            results[name] = {"ok": False, "detail": f"{code}: {exc}"[:detail_chars]}
        except Exception as exc:
            results[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:detail_chars]}

    return attempt
