"""AES-256-GCM sealing with associated data: the only cipher the vault uses.

A sealed blob is ``version byte ‖ 96-bit random nonce ‖ ciphertext+tag``. The associated data
says *what* the plaintext is — which org's data key, which org's secret of which name and
version — so a blob copied to another place fails authentication instead of decrypting there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from corral.domain.errors import Unavailable

__all__ = [
    "KEY_BYTES",
    "data_key_aad",
    "fingerprint",
    "generate_key",
    "open_sealed",
    "seal",
    "secret_aad",
]

KEY_BYTES = 32
_NONCE_BYTES = 12
_FORMAT = b"\x01"


def generate_key() -> bytes:
    return os.urandom(KEY_BYTES)


def fingerprint(key: bytes) -> str:
    """A stable public id for a key (a keyed hash: it reveals nothing of the key)."""
    digest = hmac.new(key, b"corral/vault/key-id/v1", hashlib.sha256).hexdigest()
    return f"mk-{digest[:32]}"


def _aad(*parts: str | int) -> bytes:
    # JSON of a list is unambiguous whatever the parts contain.
    return json.dumps(["corral/vault/v1", *parts], separators=(",", ":")).encode()


def data_key_aad(org_id: str) -> bytes:
    return _aad("data-key", org_id)


def secret_aad(org_id: str, name: str, version: int) -> bytes:
    return _aad("secret", org_id, name, version)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return _FORMAT + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes, *, what: str) -> bytes:
    """Decrypt ``blob`` sealed under ``key`` with ``aad``.

    Raises:
        Unavailable: the blob was altered, moved, sealed for something else or under another
            key; the message names ``what`` and never any plaintext.
    """
    if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _FORMAT:
        raise Unavailable(f"{what} is not a sealed vault blob (corrupted or foreign data)")
    nonce, body = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, body, aad)
    except InvalidTag as exc:
        raise Unavailable(
            f"{what} does not decrypt: it was altered, moved from another organization or "
            "name, or sealed under another key",
            details={"integrity": "failed"},
        ) from exc
