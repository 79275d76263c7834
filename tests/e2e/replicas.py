"""Replicated control planes as a user runs them: ``corral up`` processes with ``CORRAL_HA``
against one PostgreSQL database (a fresh one per test) and one external nats-server the test
starts, all sharing one data directory (the agents' workspaces and pid files, the bus keys, the
master key), as replicas on one machine share a volume."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from corral.bus.accounts import BusAuthority
from corral.bus.server import EmbeddedNats
from tests.support import CORRAL, corral_env, eventually

__all__ = ["Cluster", "ReplicaProcess", "external_nats"]


@contextlib.asynccontextmanager
async def external_nats(ops: Path) -> AsyncIterator[dict[str, str]]:
    """A nats-server standing in for the cluster every replica shares; the environment that
    points a replica at it."""
    authority = BusAuthority(ops / "keys", caps=None)
    async with EmbeddedNats(ops / "server", authority.trust()) as server:
        yield {
            "CORRAL_NATS_URL": server.url,
            "CORRAL_NATS_OPERATOR_SEED": (ops / "keys" / "operator.nk").read_text().strip(),
            "CORRAL_NATS_SYSTEM_SEED": (ops / "keys" / "system.nk").read_text().strip(),
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ReplicaProcess:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def health(self) -> dict[str, Any] | None:
        """What its ``/readyz`` says, or None while it does not answer."""
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                r = await client.get(self.url + "/readyz")
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    async def role(self) -> str | None:
        h = await self.health()
        return None if h is None else str(h["role"])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


@dataclass
class Cluster:
    data: Path
    env: dict[str, str]
    pg_url: str = ""  # the database every replica shares
    replicas: dict[str, ReplicaProcess] = field(default_factory=dict)

    def start(self, name: str) -> ReplicaProcess:
        port = _free_port()
        log = self.data.parent / f"{name}.log"
        env = corral_env() | self.env | {"CORRAL_REPLICA_NAME": name, "CORRAL_GATEWAY_PORT": "0"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*CORRAL, "up", "--data-dir", str(self.data), "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        replica = ReplicaProcess(name, f"http://127.0.0.1:{port}", proc, log)
        self.replicas[name] = replica
        return replica

    async def leader(self, *, timeout: float = 60.0, not_: str | None = None) -> ReplicaProcess:
        """The replica that says it leads (other than ``not_``), once one does."""

        async def find() -> ReplicaProcess | None:
            for r in self.replicas.values():
                if r.name != not_ and r.proc.poll() is None and await r.role() == "leader":
                    return r
            return None

        return await eventually(find, timeout=timeout, interval=0.05, message="a leader")

    async def standing_by(self, replica: ReplicaProcess, *, timeout: float = 60.0) -> None:
        async def standby() -> bool:
            return await replica.role() == "standby"

        await eventually(standby, timeout=timeout, message=f"{replica.name} standing by")

    def admin_key(self) -> str:
        return (self.data / "admin.key").read_text().strip()

    def stop_all(self) -> None:
        for r in self.replicas.values():
            if r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(r.proc.pid, signal.SIGCONT)
                    r.proc.send_signal(signal.SIGTERM)
        for r in self.replicas.values():
            try:
                r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait(timeout=10)
            print(f"--- {r.name} (exit {r.proc.returncode}) ---\n{r.output()[-6000:]}")  # noqa: T201 - shown when a test fails


@contextlib.contextmanager
def cluster(data: Path, env: dict[str, str], *, pg_url: str) -> Iterator[Cluster]:
    c = Cluster(data, env, pg_url)
    try:
        yield c
    finally:
        c.stop_all()
