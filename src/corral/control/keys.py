"""API keys: ``crl_<id>_<secret>``, shown once, stored hashed."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["ADMIN_KEY_FILE", "new_key", "split_key", "write_private"]

ADMIN_KEY_FILE = "admin.key"


def new_key() -> tuple[str, str, str]:
    """A new key as (key_id, secret, the whole key to hand out)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"crl_{key_id}_{secret}"


def split_key(key: str) -> tuple[str, str] | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "crl" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read, never briefly world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
