"""Where the bus authority keeps its keys and each tenant's record: one directory, mode 0700,
every file mode 0600 and replaced atomically, so a crash never leaves half a key behind.

Layout: ``operator.nk``, ``system.nk``, ``platform.nk`` (nkey seeds) and ``orgs/<org>.json``
(the org's account seed, its bus limits, the user keys minted for its agents and their
revocations). A scaled-out control plane mounts this directory from a secret store.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from corral.bus.jwt import KeyKind, NKey
from corral.domain.plans import BusLimits

__all__ = ["KeyStore", "OrgRecord"]


@dataclass(slots=True)
class OrgRecord:
    """One tenant's account as the authority knows it."""

    account: NKey
    limits: BusLimits
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # key → agent, expires
    revocations: dict[str, int] = field(default_factory=dict)  # key or "*" → time
    issued_at: int = 0  # of the last account JWT: the next must not be older

    def to_json(self) -> dict[str, Any]:
        return {
            "account_seed": self.account.seed,
            "limits": asdict(self.limits),
            "users": self.users,
            "revocations": self.revocations,
            "issued_at": self.issued_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrgRecord:
        return cls(
            account=NKey.from_seed(data["account_seed"]),
            limits=BusLimits(**data["limits"]),
            users=dict(data.get("users", {})),
            revocations={k: int(v) for k, v in data.get("revocations", {}).items()},
            issued_at=int(data.get("issued_at", 0)),
        )


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class KeyStore:
    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._orgs_dir = self.directory / "orgs"
        self._orgs_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        os.chmod(self._orgs_dir, 0o700)

    def key(self, name: str, kind: KeyKind, given: str | None = None) -> NKey:
        """``given`` if set, else the stored key ``name``, else a new one, stored."""
        if given is not None:
            return NKey.from_seed(given)
        path = self.directory / f"{name}.nk"
        if path.exists():
            return NKey.from_seed(path.read_text())
        key = NKey.generate(kind)
        _write_private(path, key.seed + "\n")
        return key

    def load_orgs(self) -> dict[str, OrgRecord]:
        return {
            path.stem: OrgRecord.from_json(json.loads(path.read_text()))
            for path in sorted(self._orgs_dir.glob("*.json"))
        }

    def save_org(self, org: str, record: OrgRecord) -> None:
        # every mint saves the org's users of the last day: orjson, as that list grows
        _write_private(self._orgs_dir / f"{org}.json", orjson.dumps(record.to_json()).decode())

    def delete_org(self, org: str) -> None:
        (self._orgs_dir / f"{org}.json").unlink(missing_ok=True)
