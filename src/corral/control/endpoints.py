"""Where local agents reach the platform (the bus, the model gateway), kept across restarts.

An agent is started with the bus's URL and the model gateway's in its environment, and its
sandbox lets it connect to those two ports alone. A control plane that dies leaves its agents
running for the next one to adopt (:mod:`corral.runtime.local.adoption`), which is only right
if they can still reach it: the next start reads what the last one recorded here, takes the
same ports for the embedded nats-server and the gateway when it is given none and they are
free, and adopts only if both URLs came out the same — and only if the agents were started
under the same settings (``setup``: a digest of the sandbox's settings and the environment
every agent is given), so that a restart that tightens the sandbox never leaves agents running
under the looser one. The file says nothing secret (two loopback URLs and a digest), and is
the data directory's own, like ``api.url``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from corral.control.keys import write_private

__all__ = ["ENDPOINTS_FILE", "AgentEndpoints", "setup_digest"]

ENDPOINTS_FILE = "agent-endpoints.json"


@dataclass(frozen=True)
class AgentEndpoints:
    """The bus's and the model gateway's URLs, as agents are given them, and the digest of
    the rest of what they are started with (:func:`setup_digest`)."""

    bus: str
    gateway: str
    setup: str = ""

    @classmethod
    def read(cls, data_dir: Path) -> AgentEndpoints | None:
        """What the last start recorded; None if nothing was, or it cannot be read."""
        try:
            got = json.loads((data_dir / ENDPOINTS_FILE).read_text())
            return cls(
                bus=str(got["bus"]), gateway=str(got["gateway"]), setup=str(got.get("setup", ""))
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, data_dir: Path) -> None:
        write_private(
            data_dir / ENDPOINTS_FILE,
            json.dumps({"bus": self.bus, "gateway": self.gateway, "setup": self.setup}),
        )

    def changes(self, before: AgentEndpoints) -> list[str]:
        """What differs from ``before``, said for the log."""
        said = []
        if self.bus != before.bus:
            said.append(f"the bus moved ({before.bus} -> {self.bus})")
        if self.gateway != before.gateway:
            said.append(f"the model gateway moved ({before.gateway} -> {self.gateway})")
        if self.setup != before.setup:
            said.append("the sandbox's settings or the agents' environment changed")
        return said

    @property
    def bus_port(self) -> int | None:
        return _port(self.bus)

    @property
    def gateway_port(self) -> int | None:
        return _port(self.gateway)


def _port(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        return None


def setup_digest(values: Mapping[str, object]) -> str:
    """A short digest of what agents are started with; equal values, equal digests."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
