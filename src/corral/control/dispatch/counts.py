"""How many tasks the store holds, by org, priority and state, kept as the book decides.

``/metrics`` shows them at every scrape. Counted in the store each time (a ``GROUP BY`` over
every task ever kept) a scrape cost grew with the history: a million tasks made it half a
second of the control plane's time, several times a second for a dashboard. The dispatcher
is the only writer of task state, so the counts are read from the store once, when it takes
over, and kept from then on: each task it creates and each move it decides changes them, and
what leaves the store without it (tasks pruned past their retention, an org deleted with its
tasks) is taken off as it goes. A task the store quarantines on a later read (a row that no
longer loads, failed in place) is not seen here; the next takeover counts it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from corral.domain.tenancy import Organization

__all__ = ["TaskCounts"]

_Key = tuple[str, str, str]  # org id, priority, state


class TaskCounts:
    def __init__(self) -> None:
        self._n: dict[_Key, int] | None = None  # None until read from the store

    @property
    def loaded(self) -> bool:
        return self._n is not None

    def load(self, rows: Iterable[tuple[str, str, str, int]]) -> None:
        """The store's counts (org id, priority, state, n), read once nothing moves."""
        self._n = {(org, priority, state): n for org, priority, state, n in rows if n}

    def created(self, org_id: str, priority: str, state: str) -> None:
        if self._n is not None:
            key = (org_id, priority, state)
            self._n[key] = self._n.get(key, 0) + 1

    def uncreated(self, org_id: str, priority: str, state: str) -> None:
        """A task :meth:`created` that the store refused (its idempotency key raced in)."""
        if self._n is not None:
            self._take((org_id, priority, state), 1)

    def moved(self, org_id: str, priority: str, frm: str, to: str) -> None:
        if self._n is not None:
            self._take((org_id, priority, frm), 1)
            key = (org_id, priority, to)
            self._n[key] = self._n.get(key, 0) + 1

    def pruned(self, gone: Iterable[tuple[str, str, str]]) -> None:
        """Tasks deleted past their retention: (org id, priority, state) of each."""
        if self._n is not None:
            for key in gone:
                self._take(key, 1)

    def drop_org(self, org_id: str) -> None:
        """An org deleted with its tasks."""
        if self._n is not None:
            for key in [k for k in self._n if k[0] == org_id]:
                del self._n[key]

    def items(self) -> list[tuple[str, str, str, int]]:
        """(org id, priority, state, n), as :meth:`load` takes them."""
        return [(org, priority, state, n) for (org, priority, state), n in (self._n or {}).items()]

    def rows(self, orgs: Mapping[str, Organization]) -> list[tuple[str, str, str, str, int]]:
        """(org slug, plan, priority, state, n) of the orgs in ``orgs``, as ``/metrics``
        shows them."""
        out: list[tuple[str, str, str, str, int]] = []
        for (org_id, priority, state), n in (self._n or {}).items():
            org = orgs.get(org_id)
            if org is not None:
                out.append((org.slug, org.plan.name, priority, state, n))
        return out

    def _take(self, key: _Key, n: int) -> None:
        assert self._n is not None
        left = self._n.get(key, 0) - n
        if left > 0:
            self._n[key] = left
        else:
            self._n.pop(key, None)
