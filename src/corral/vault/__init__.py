"""Per-organization encrypted secrets, the grants that let agents read them, and their audit.

Belongs here: envelope encryption (``crypto``, ``keys``), the secrets service (``service``),
grants (``grants``), the audit log (``audit``), verification of agents' signed requests
(``access``) and the persistence seam the vault needs (``storage.VaultStore``) with an
in-memory fake (``memory``).

Must not be here: tables or SQL (``corral.store.vault_repo`` implements ``VaultStore``), HTTP
or NATS handling (the API and the bus call in), and any import of ``corral.store``,
``corral.control``, ``corral.api`` or ``corral.cli``. Secret values leave this package only
through ``Vault.read_for_agent``; they never appear in records, audit details, reprs or
error messages.
"""

from __future__ import annotations

from corral.vault.access import AgentLookup, NonceCache, SecretAccess
from corral.vault.audit import AuditLog
from corral.vault.grants import Grants
from corral.vault.keys import MASTER_KEY_ENV, Keyring, MasterKey
from corral.vault.memory import InMemoryVaultStore
from corral.vault.service import Vault
from corral.vault.storage import VaultStore

__all__ = [
    "MASTER_KEY_ENV",
    "AgentLookup",
    "AuditLog",
    "Grants",
    "InMemoryVaultStore",
    "Keyring",
    "MasterKey",
    "NonceCache",
    "SecretAccess",
    "Vault",
    "VaultStore",
]
