"""The composition root: one object that owns every service of a running control plane."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType

from corral.control.keys import ADMIN_KEY_FILE, new_key, write_private
from corral.control.tenants import OrgHooks, TenantService
from corral.settings import Settings
from corral.store.db import Database
from corral.store.quota import QuotaLedger
from corral.store.tenants import OrgRepository

__all__ = ["Platform"]

log = logging.getLogger("corral.platform")


class Platform:
    """Start with ``async with Platform(settings) as p:``; everything stops on exit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir: Path = settings.data_dir
        self.db = Database(settings.resolved_database_url)
        self.orgs = OrgRepository(self.db)
        self.ledger = QuotaLedger(self.db)
        self.hooks = OrgHooks(on_create=[], on_delete=[])
        self.tenants = TenantService(self.orgs, self.ledger, self.hooks)
        self.new_admin_key: str | None = None  # set on the first start only
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Platform:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        await self.db.start()
        self._stack.push_async_callback(self.db.close)
        await self._ensure_admin_key()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _ensure_admin_key(self) -> None:
        path = self.data_dir / ADMIN_KEY_FILE
        if await self.orgs.has_admin_key() and path.exists():
            return
        key_id, secret, key = new_key()
        await self.orgs.add_key(key_id=key_id, key_secret=secret, org_id=None)
        write_private(path, key + "\n")
        self.new_admin_key = key
