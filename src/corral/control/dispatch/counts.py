"""How many tasks the store holds, by org, priority and state, kept as the book decides.

``/metrics`` shows them at every scrape. Counted in the store each time (a ``GROUP BY`` over
every task ever kept) a scrape cost grew with the history: a million tasks made it seconds of
the database's time, several times a second for a dashboard. The dispatcher is the only writer
of task state, so the counts are kept from what it decides:

- **Unfinished tasks** (queued, dispatched, running) are counted from the start: each one the
  dispatcher loads when it takes over, creates or moves changes them.
- **Finished tasks** never change again, and there may be millions: they are read from the
  store once, in the background once the API serves (:meth:`begin_load` then
  :meth:`finish_load`), never on the way to serving. The read counts those that finished
  by a mark taken when it begins (their ``updated_at`` is the moment the move was decided,
  on this process's clock); those that finish afterwards are counted as they finish. Retention
  prunes only once the read is done; an org deleted meanwhile is left out of it.

Until the read is done the counts are not :attr:`loaded` and ``/metrics`` counts in the store,
as a replica that does not lead does. A task the store quarantines on a later read (a row that
no longer loads, failed in place) is not seen here; the next takeover counts it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from corral.domain.tasks import TaskState
from corral.domain.tenancy import Organization

__all__ = ["TaskCounts"]

_Key = tuple[str, str, str]  # org id, priority, state
_FINISHED = frozenset(s.value for s in TaskState if s.is_terminal)


class TaskCounts:
    def __init__(self) -> None:
        self._n: dict[_Key, int] = {}
        self.loaded = False

    # -- what the book decides ------------------------------------------------------------
    def created(self, org_id: str, priority: str, state: str) -> None:
        """A task created, or an unfinished one loaded when the dispatcher takes over."""
        self._add((org_id, priority, state), 1)

    def uncreated(self, org_id: str, priority: str, state: str) -> None:
        """A task :meth:`created` that the store refused (its idempotency key raced in)."""
        self._add((org_id, priority, state), -1)

    def moved(self, org_id: str, priority: str, frm: str, to: str) -> None:
        self._add((org_id, priority, frm), -1)
        self._add((org_id, priority, to), 1)

    def pruned(self, gone: Iterable[tuple[str, str, str]]) -> None:
        """Tasks deleted past their retention: (org id, priority, state) of each."""
        for key in gone:
            self._add(key, -1)

    def drop_org(self, org_id: str) -> None:
        """An org deleted with its tasks."""
        for key in [k for k in self._n if k[0] == org_id]:
            del self._n[key]

    # -- the finished tasks, read once ----------------------------------------------------
    def begin_load(self) -> datetime:
        """Start the read of finished tasks: those finished from now on are counted as they
        finish, and the read must count only those updated at or before the returned mark.
        Whatever was counted as finished so far is the read's to count."""
        self._n = {k: n for k, n in self._n.items() if k[2] not in _FINISHED}
        mark = datetime.now(UTC)
        # a move decided from here on is stamped after the mark, never at it (the clock has
        # microseconds; a clock set back stops the wait after a few)
        for _ in range(10_000):
            if datetime.now(UTC) > mark:
                break
        return mark

    def finish_load(
        self, rows: Iterable[tuple[str, str, str, int]], orgs: Mapping[str, Organization]
    ) -> None:
        """The read's counts of finished tasks (org id, priority, state, n), of the orgs that
        still exist (``orgs``), after :meth:`begin_load`."""
        for org_id, priority, state, n in rows:
            if org_id in orgs and state in _FINISHED:
                self._add((org_id, priority, state), n)
        self.loaded = True

    # -- reading --------------------------------------------------------------------------
    def items(self) -> list[tuple[str, str, str, int]]:
        """(org id, priority, state, n), as the store's own count gives them."""
        return [(org, priority, state, n) for (org, priority, state), n in self._n.items()]

    def rows(self, orgs: Mapping[str, Organization]) -> list[tuple[str, str, str, str, int]]:
        """(org slug, plan, priority, state, n) of the orgs in ``orgs``, as ``/metrics``
        shows them."""
        out: list[tuple[str, str, str, str, int]] = []
        for (org_id, priority, state), n in self._n.items():
            org = orgs.get(org_id)
            if org is not None:
                out.append((org.slug, org.plan.name, priority, state, n))
        return out

    def _add(self, key: _Key, n: int) -> None:
        left = self._n.get(key, 0) + n
        if left > 0:
            self._n[key] = left
        else:
            self._n.pop(key, None)
