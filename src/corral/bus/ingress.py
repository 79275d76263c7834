"""Who pushes how many bytes into the shared server: the top talkers' publish rates.

NATS has no per-connection rate limit, so one agent publishing as fast as it can makes the
server busy receiving for every tenant even when its streams keep its data in its own quota.
To fence that, the control plane must first *see* it. The server counts what each client
connection sent (``in_bytes``, ``in_msgs``) and answers ``$SYS.REQ.SERVER.PING.CONNZ`` on the
SYSTEM account with the connections sorted by bytes received, each with its account and
authorized user key; :class:`IngressMeter` asks for the top few (bounded cost: nothing per idle
org or agent), turns counters into per-connection deltas, and attributes them to the agent the
user key was minted for (the authority's records). Comparing them with a budget and acting is
the control plane's (``corral.control.ingress``); this module does no policy.

Counters are per connection: a reconnect is a new connection (a new ``cid``) whose counters
start at zero, and a server restart may reuse a ``cid`` with smaller counters. A connection
seen for the first time is credited with what it sent at its average rate since it started,
over at most one polling interval, so a connection that only now entered the top list is not
charged its whole lifetime at once, while a brand-new flooder is charged all it sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

__all__ = [
    "CONNZ",
    "AgentDirectory",
    "ConnSample",
    "IngressMeter",
    "IngressReading",
    "Talker",
    "connz_request",
]

#: Every server answers; an embedded or single server is the only one to answer.
CONNZ = "$SYS.REQ.SERVER.PING.CONNZ"
_TOP = 64


def connz_request(top: int = _TOP) -> bytes:
    """The CONNZ options: the ``top`` connections by bytes received, with their user keys."""
    return json.dumps({"sort": "bytes_from", "limit": top, "auth": True}).encode()


def _instant(value: Any) -> float | None:
    """Seconds since the epoch of a server timestamp (RFC 3339, nanoseconds allowed)."""
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # keep microseconds: Python reads at most six digits of a fraction
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ConnSample:
    """One client connection's counters, as the server reported them."""

    cid: int
    account: str
    user: str
    in_bytes: int
    in_msgs: int
    started: float | None = None  # epoch seconds, the server's clock

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> ConnSample:
        return cls(
            cid=int(d.get("cid", 0)),
            account=str(d.get("account") or ""),
            user=str(d.get("authorized_user") or d.get("nkey") or ""),
            in_bytes=int(d.get("in_bytes", 0)),
            in_msgs=int(d.get("in_msgs", 0)),
            started=_instant(d.get("start")),
        )


@dataclass(frozen=True, slots=True)
class Talker:
    """What one agent published since the previous reading, over all its connections."""

    org: str
    agent: str
    bytes: int
    msgs: int


@dataclass(frozen=True, slots=True)
class IngressReading:
    """One poll: every known agent among the top talkers, and the seconds it covers."""

    seconds: float
    talkers: list[Talker] = field(default_factory=list)

    def by_org(self) -> dict[str, tuple[int, int]]:
        """(bytes, messages) per org, all its measured agents together."""
        totals: dict[str, tuple[int, int]] = {}
        for t in self.talkers:
            b, m = totals.get(t.org, (0, 0))
            totals[t.org] = (b + t.bytes, m + t.msgs)
        return totals


class AgentDirectory(Protocol):
    """Which org an account is and which agent a user key was minted for (the authority)."""

    def org_for_account(self, account: str) -> str | None: ...

    def agent_for_user(self, org: str, user: str) -> str | None: ...


class IngressMeter:
    """Per-connection deltas between CONNZ readings, attributed to agents.

    Args:
        directory: maps accounts to orgs and user keys to agents.
        top: how many connections (the busiest by bytes received) each reading covers.
        clock: the fallback clock when the server's reply carries no timestamp.
    """

    def __init__(
        self,
        directory: AgentDirectory,
        *,
        top: int = _TOP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.top = top
        self._clock = clock
        self._last: dict[int, tuple[str, int, int]] = {}  # cid → user, bytes, msgs
        self._at: float | None = None

    #: the seconds the first reading is taken to cover (no earlier reading to subtract)
    first_interval = 1.0

    async def read(
        self, request: Callable[[str, bytes], Awaitable[dict[str, Any]]]
    ) -> IngressReading:
        """Ask the server (``request(subject, body)`` answers the reply's ``data``)."""
        data = await request(CONNZ, connz_request(self.top))
        now = _instant(data.get("now")) or self._clock()
        conns = data.get("connections") or []
        return self.update((ConnSample.from_wire(c) for c in conns if isinstance(c, dict)), now)

    def update(self, samples: Iterable[ConnSample], now: float) -> IngressReading:
        """Fold one reading in. The first covers a nominal :attr:`first_interval`."""
        interval = self.first_interval if self._at is None else max(now - self._at, 1e-3)
        self._at = now
        seen: dict[int, tuple[str, int, int]] = {}
        per_agent: dict[tuple[str, str], tuple[int, int]] = {}
        for s in samples:
            seen[s.cid] = (s.user, s.in_bytes, s.in_msgs)
            sent, msgs = self._delta(s, now, interval)
            if sent == 0 and msgs == 0:
                continue
            org = self.directory.org_for_account(s.account)
            agent = None if org is None else self.directory.agent_for_user(org, s.user)
            if org is None or agent is None:
                continue  # the control plane's own users, SYSTEM, PLATFORM: not agents
            b, m = per_agent.get((org, agent), (0, 0))
            per_agent[(org, agent)] = (b + sent, m + msgs)
        self._last = seen  # connections gone from the top list are forgotten
        talkers = [Talker(org, agent, b, m) for (org, agent), (b, m) in per_agent.items()]
        return IngressReading(seconds=interval, talkers=talkers)

    def _delta(self, s: ConnSample, now: float, interval: float) -> tuple[int, int]:
        last = self._last.get(s.cid)
        if last is not None and last[0] == s.user and s.in_bytes >= last[1]:
            return s.in_bytes - last[1], max(0, s.in_msgs - last[2])
        # first seen, or a reused cid whose counters restarted: its average since it started,
        # over the interval at most (all it sent, if it is younger than that)
        if s.started is None:
            return 0, 0  # no age to average over: measured from the next reading on
        age = max(now - s.started, 1e-3)
        share = min(1.0, interval / age)
        return int(s.in_bytes * share), int(s.in_msgs * share)
