"""Secrets as the domain sees them: their names and sizes, and the records the vault keeps.

The vault (crypto and policy) and the store (tables) exchange these records through the
vault's persistence protocol; neither imports the other. A secret value never appears in a
record: the store only ever holds ciphertext and wrapped keys, and what callers list is
:class:`SecretInfo` — name, version and times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from corral.domain.errors import InvalidInput
from corral.domain.grants import SecretGrant
from corral.domain.ids import OrgId

__all__ = [
    "MAX_AUDIT_PAGE",
    "MAX_SECRET_BYTES",
    "MAX_SECRET_NAME",
    "AuditAction",
    "AuditEntry",
    "AuditRecord",
    "DataKeyRecord",
    "GrantRecord",
    "SecretInfo",
    "SecretRecord",
    "validate_secret_name",
    "validate_secret_value",
]

MAX_SECRET_NAME = 253
MAX_SECRET_BYTES = 64 * 1024
#: The most audit records one page may hold.
MAX_AUDIT_PAGE = 1000
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def validate_secret_name(name: object) -> str:
    """Check that ``name`` can name a secret: a DNS-1123 subdomain (``github-token``).

    Raises:
        InvalidInput: naming what is wrong with the name.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInput("secret name must be a non-empty string", details={"field": "name"})
    if len(name) > MAX_SECRET_NAME:
        raise InvalidInput(
            f"secret name is {len(name)} characters; at most {MAX_SECRET_NAME} allowed",
            details={"field": "name", "max_length": MAX_SECRET_NAME},
        )
    if not _DNS1123_SUBDOMAIN.fullmatch(name):
        raise InvalidInput(
            f"secret name {name!r} is not a DNS-1123 subdomain: use lower-case letters, digits, "
            "'-' and '.', each dot-separated part starting and ending with a letter or digit",
            details={"field": "name", "name": name},
        )
    return name


def validate_secret_value(value: object, *, max_bytes: int = MAX_SECRET_BYTES) -> bytes:
    """Check that ``value`` is bytes of at most ``max_bytes``; the message never shows it.

    Raises:
        InvalidInput: the value is not bytes or is too large.
    """
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidInput(
            f"secret value must be bytes, not {type(value).__name__}",
            details={"field": "value"},
        )
    data = bytes(value)
    if len(data) > max_bytes:
        raise InvalidInput(
            f"secret value is {len(data)} bytes; at most {max_bytes} bytes allowed",
            details={"field": "value", "size": len(data), "max_bytes": max_bytes},
        )
    return data


class AuditAction(StrEnum):
    SECRET_PUT = "secret.put"
    SECRET_DELETE = "secret.delete"
    SECRET_READ = "secret.read"  # an agent's read, allowed or denied
    GRANT_ADD = "grant.add"
    GRANT_REMOVE = "grant.remove"
    KEY_CREATE = "key.create"  # the org's data key was generated
    KEY_REWRAP = "key.rewrap"  # the org's data key was re-wrapped under a new master key
    KEY_DESTROY = "key.destroy"  # the org's data key, secrets and grants were destroyed
    MODEL_DECLARE = "model.declare"  # a model endpoint for the gateway was declared
    MODEL_CHANGE = "model.change"  # a declared model endpoint was changed
    MODEL_REMOVE = "model.remove"
    MODEL_BUDGET = "model.budget"  # the org's period budget was set
    MODEL_CALL = "model.call"  # a gateway call, logged only when refused


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What may be shown of a secret: never its value."""

    name: str
    version: int
    created_at: datetime
    updated_at: datetime

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class SecretRecord:
    """A secret as stored: ciphertext under the org's data key, bound to org, name, version."""

    org_id: OrgId
    name: str
    version: int
    ciphertext: bytes = field(repr=False)
    created_at: datetime
    updated_at: datetime

    @property
    def info(self) -> SecretInfo:
        return SecretInfo(self.name, self.version, self.created_at, self.updated_at)


@dataclass(frozen=True, slots=True)
class DataKeyRecord:
    """An org's data key, wrapped under the master key identified by ``master_key_id``."""

    org_id: OrgId
    wrapped_key: bytes = field(repr=False)
    master_key_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class GrantRecord:
    id: str
    org_id: OrgId
    grant: SecretGrant
    created_at: datetime

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, **self.grant.to_wire(), "createdAt": self.created_at.isoformat()}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited event, about to be written. ``detail`` never holds a secret value."""

    org_id: OrgId
    actor: str
    action: AuditAction
    target: str
    allowed: bool
    at: datetime
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited event as stored; ``id`` grows with time and pages the log."""

    id: int
    org_id: OrgId
    actor: str
    action: str
    target: str
    allowed: bool
    at: datetime
    detail: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "allowed": self.allowed,
            "at": self.at.isoformat(),
            "detail": self.detail,
        }
