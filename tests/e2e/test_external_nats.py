"""CORRAL_NATS_URL: the control plane drives a NATS server it did not start (standing in for
an existing cluster that trusts Corral's operator)."""

from __future__ import annotations

from pathlib import Path

import httpx

from corral.api.server import running
from corral.bus.accounts import BusAuthority
from corral.bus.server import EmbeddedNats
from tests.e2e.conftest import Live, live_settings


async def test_an_external_nats_server_carries_the_platform(tmp_path: Path) -> None:
    ops = tmp_path / "operator"  # what the NATS operator's team holds
    authority = BusAuthority(ops / "keys", caps=None)
    async with EmbeddedNats(ops / "server", authority.trust()) as external:
        settings = live_settings(
            tmp_path / "data",
            nats_url=external.url,
            nats_operator_seed=(ops / "keys" / "operator.nk").read_text().strip(),
            nats_system_seed=(ops / "keys" / "system.nk").read_text().strip(),
        )
        async with running(settings) as srv:
            assert srv.platform.nats is None  # no server of its own
            assert srv.platform.bus.url == external.url
            headers = {"Authorization": f"Bearer {srv.platform.new_admin_key}"}
            async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as admin:
                live = Live(srv, admin, tmp_path / "data")
                await live.org("acme")
                agent = await live.agent("acme", "w")
                t = await live.task("acme", agent=agent["id"], payload={"op": "echo"})
                done = await live.wait_task("acme", t["id"])
                assert done["state"] == "completed"
