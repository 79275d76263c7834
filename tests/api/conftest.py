from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.api.app import create_app
from corral.control.platform import Platform
from corral.settings import Settings


@pytest.fixture
async def platform(tmp_path: Path, database_url: str) -> AsyncIterator[Platform]:
    # port 0: the model gateway binds a free port, not the default one another run may hold
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, port=0)
    async with Platform(settings) as p:
        yield p


@pytest.fixture
async def admin(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(platform)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {platform.new_admin_key}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:
        yield c


def as_key(client: httpx.AsyncClient, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=client._transport,  # the same app
        base_url="http://t",
        headers={"Authorization": f"Bearer {key}"},
    )
