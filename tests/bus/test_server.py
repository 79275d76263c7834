"""The embedded nats-server: started healthy, restarted when it dies, never orphaned."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
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


def _orphaning_script(tmp_path: Path) -> str:
    """A process that runs an embedded server on ``tmp_path / "nats"`` and prints its pid
    and port."""
    return textwrap.dedent(
        f"""
        import asyncio, sys
        from corral.bus import BusAuthority, EmbeddedNats, JetStreamCaps, ServerOptions

        async def main():
            caps = JetStreamCaps({CAPS.memory}, {CAPS.storage})
            authority = BusAuthority({str(tmp_path / "bus")!r}, caps=caps)
            options = ServerOptions(caps=caps)
            async with EmbeddedNats({str(tmp_path / "nats")!r}, authority.trust(), options) as s:
                print(s.pid, s.url.rsplit(":", 1)[1], flush=True)
                await asyncio.Event().wait()

        asyncio.run(main())
        """
    )


async def _server_of_a_killed_parent(tmp_path: Path, *, stop: bool = False) -> tuple[int, int]:
    """(pid, port) of the server a parent process started before it was killed -9 (with
    ``stop``, the server was stopped first, so that it cannot close)."""
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _orphaning_script(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    try:
        pid, port = map(int, (await asyncio.wait_for(parent.stdout.readline(), 20)).split())
        assert not _gone(pid)
        if stop:
            os.kill(pid, signal.SIGSTOP)
    finally:
        parent.kill()
        await parent.wait()
    return pid, port


async def test_the_server_dies_with_its_parent(tmp_path: Path) -> None:
    child, _ = await _server_of_a_killed_parent(tmp_path)
    assert await eventually(lambda: _gone(child), message="nats-server gone with its parent")


async def test_the_next_server_waits_for_the_last_one_to_close_and_listens_where_it_did(
    tmp_path: Path,
) -> None:
    # the last server cannot close (stopped): it is given the grace, then killed, and only
    # then does a server open the same store, on the same port
    old, port = await _server_of_a_killed_parent(tmp_path, stop=True)
    caps = CAPS
    authority = BusAuthority(tmp_path / "bus", caps=caps)
    options = ServerOptions(caps=caps, prefer_port=port, stop_grace=0.5)
    try:
        async with EmbeddedNats(tmp_path / "nats", authority.trust(), options) as server:
            assert _gone(old)
            assert server.url.endswith(f":{port}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGKILL)  # whatever happened, no stopped server stays behind


async def test_a_preferred_port_another_program_holds_is_not_waited_for(
    tmp_path: Path, authority: BusAuthority
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = ServerOptions(caps=CAPS, prefer_port=port)
        async with EmbeddedNats(tmp_path / "nats", authority.trust(), options) as server:
            assert not server.url.endswith(f":{port}")
            async with PlatformBus(server.url, authority) as bus:
                await bus.ensure_org("acme", LIMITS)


async def test_a_server_that_cannot_start_says_so(tmp_path: Path, authority: BusAuthority) -> None:
    broken = ServerOptions(caps=CAPS, host="256.0.0.1", start_timeout=5)
    with pytest.raises(Exception, match="nats-server"):
        async with EmbeddedNats(tmp_path / "nats", authority.trust(), broken):
            pass
