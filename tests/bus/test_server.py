"""The embedded nats-server: started healthy, restarted when it dies, never orphaned."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import httpx
import psutil
import pytest

from corral.bus import BusAuthority, EmbeddedNats, PlatformBus, ServerOptions
from corral.domain.errors import Unavailable
from corral.domain.messages import MessageType, TaskMessage
from tests.bus.conftest import CAPS, LIMITS
from tests.support import eventually


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_by_default_the_server_listens_on_its_client_port_alone(
    tmp_path: Path, authority: BusAuthority
) -> None:
    async with EmbeddedNats(tmp_path / "nats", authority.trust(), ServerOptions(caps=CAPS)) as s:
        assert s.pid is not None
        listening = {
            c.laddr.port
            for c in psutil.Process(s.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {int(s.url.rsplit(":", 1)[1])}  # no monitoring port to reach
        assert "http" not in (tmp_path / "nats" / "server.conf").read_text()
        with pytest.raises(Unavailable, match="monitoring is off"):
            _ = s.monitor_url


async def test_the_server_starts_healthy_on_its_own_ports_and_stops_cleanly(
    tmp_path: Path, authority: BusAuthority
) -> None:
    options = ServerOptions(caps=CAPS, monitoring=True)
    async with EmbeddedNats(tmp_path / "nats", authority.trust(), options) as s:
        assert s.url.startswith("nats://127.0.0.1:") and not s.url.endswith(":4222")
        pid = s.pid
        assert pid is not None
        async with httpx.AsyncClient() as http:
            health = await http.get(f"{s.monitor_url}/healthz")
            jsz = (await http.get(f"{s.monitor_url}/jsz")).json()
        assert health.json() == {"status": "ok"}
        assert jsz["config"]["max_storage"] == CAPS.storage
        assert (tmp_path / "nats" / "server.conf").stat().st_mode & 0o777 == 0o600
    assert _gone(pid)


async def test_a_server_that_dies_is_restarted_on_the_same_url_with_its_data(
    tmp_path: Path, authority: BusAuthority
) -> None:
    async with (
        EmbeddedNats(tmp_path / "nats", authority.trust(), ServerOptions(caps=CAPS)) as server,
        PlatformBus(server.url, authority) as bus,
    ):
        await bus.ensure_org("a", LIMITS)
        url, first = server.url, server.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: server.restarts == 1, message="restart")
        assert server.url == url and server.pid != first

        async def delivered() -> bool:
            task = TaskMessage("t", "platform", "a1", MessageType.DELEGATE)
            try:
                return await bus.deliver("a", "a1", task) == 1
            except Exception:
                return False

        assert await eventually(delivered, message="delivery after the restart")


async def test_the_server_dies_with_its_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from corral.bus import BusAuthority, EmbeddedNats, JetStreamCaps, ServerOptions

        async def main():
            caps = JetStreamCaps({CAPS.memory}, {CAPS.storage})
            authority = BusAuthority({str(tmp_path / "bus")!r}, caps=caps)
            options = ServerOptions(caps=caps)
            async with EmbeddedNats({str(tmp_path / "nats")!r}, authority.trust(), options) as s:
                print(s.pid, flush=True)
                await asyncio.Event().wait()

        asyncio.run(main())
        """
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    try:
        line = await asyncio.wait_for(parent.stdout.readline(), 20)
        child = int(line)
        assert not _gone(child)
    finally:
        parent.kill()
        await parent.wait()
    assert await eventually(lambda: _gone(child), message="nats-server gone with its parent")


async def test_a_server_that_cannot_start_says_so(tmp_path: Path, authority: BusAuthority) -> None:
    broken = ServerOptions(caps=CAPS, host="256.0.0.1", start_timeout=5)
    with pytest.raises(Exception, match="nats-server"):
        async with EmbeddedNats(tmp_path / "nats", authority.trust(), broken):
            pass
