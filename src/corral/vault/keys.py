"""The master key and the keyring that wraps each organization's data key under it.

Envelope encryption: each org has a random 256-bit data key that encrypts its secrets; the
data key is stored wrapped (AES-GCM, the org id as associated data) under one master key.
The master key lives in ``<data dir>/master.key`` (base64url, created 0600 on first start;
refused when group or others may read it) or, when set, in ``CORRAL_MASTER_KEY``, which wins.

Rotating the master key re-wraps every data key and re-encrypts no secret. It is crash-safe:
the new key is first written to ``master.key.next``; a start that finds that file finishes
the rotation (re-wraps what is left, then renames it over ``master.key``). With the key in
the environment, set the new key in ``CORRAL_MASTER_KEY`` and the old one in
``CORRAL_MASTER_KEY_PREVIOUS`` (comma-separated if several) and start: the same happens.
Keys are identified by a fingerprint stored with each wrapped data key, so a wrong key is
refused at start with a clear message instead of failing on the first read.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from corral.domain.agent_auth import b64url_decode, b64url_encode
from corral.domain.errors import InvalidInput, Unavailable
from corral.domain.ids import OrgId
from corral.domain.secrets import DataKeyRecord
from corral.vault import crypto

__all__ = [
    "MASTER_KEY_ENV",
    "MASTER_KEY_FILE",
    "PREVIOUS_MASTER_KEYS_ENV",
    "Keyring",
    "MasterKey",
]

MASTER_KEY_ENV = "CORRAL_MASTER_KEY"
PREVIOUS_MASTER_KEYS_ENV = "CORRAL_MASTER_KEY_PREVIOUS"
MASTER_KEY_FILE = "master.key"
_NEXT_SUFFIX = ".next"


@dataclass(frozen=True, slots=True)
class MasterKey:
    """256 bits of key material; its repr shows only the fingerprint."""

    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.material) != crypto.KEY_BYTES:
            raise InvalidInput(
                f"a master key is {crypto.KEY_BYTES} bytes; got {len(self.material)}",
                details={"expected_bytes": crypto.KEY_BYTES},
            )

    @property
    def key_id(self) -> str:
        return crypto.fingerprint(self.material)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(crypto.generate_key())

    @classmethod
    def from_text(cls, text: str, *, source: str = "master key") -> MasterKey:
        """Read base64url text (padding optional, surrounding whitespace ignored).

        Raises:
            InvalidInput: the text is not base64url of 32 bytes; the message never shows it.
        """
        try:
            material = b64url_decode(text.strip())
        except InvalidInput:
            raise InvalidInput(f"{source} is not base64url text") from None
        if len(material) != crypto.KEY_BYTES:
            raise InvalidInput(
                f"{source} decodes to {len(material)} bytes; a master key is "
                f"{crypto.KEY_BYTES} bytes of base64url",
                details={"expected_bytes": crypto.KEY_BYTES},
            )
        return cls(material)

    def to_text(self) -> str:
        return b64url_encode(self.material)

    def __str__(self) -> str:
        return f"MasterKey({self.key_id})"


class Keyring:
    """The master key in use, the retired ones still needed to finish a rotation, and where
    the key came from. Wraps and unwraps data keys; never holds secrets."""

    def __init__(
        self,
        current: MasterKey,
        *,
        retired: Iterable[MasterKey] = (),
        path: Path | None = None,
        source: str = "memory",
    ) -> None:
        self._current = current
        self._retired: dict[str, MasterKey] = {k.key_id: k for k in retired}
        self._retired.pop(current.key_id, None)
        self._path = path
        self.source = source

    def __repr__(self) -> str:
        return f"Keyring(current={self.current_id}, retired={sorted(self._retired)})"

    @classmethod
    def open(cls, data_dir: Path, *, environ: Mapping[str, str] | None = None) -> Keyring:
        """The keyring from ``CORRAL_MASTER_KEY`` if set, else from ``<data_dir>/master.key``,
        created (0600) on first start.

        Raises:
            Unavailable: the key file may be read by group or others, or cannot be read.
            InvalidInput: the key is not base64url of 32 bytes.
        """
        env = os.environ if environ is None else environ
        if env.get(MASTER_KEY_ENV):
            current = MasterKey.from_text(env[MASTER_KEY_ENV], source=MASTER_KEY_ENV)
            retired = [
                MasterKey.from_text(part, source=PREVIOUS_MASTER_KEYS_ENV)
                for part in env.get(PREVIOUS_MASTER_KEYS_ENV, "").split(",")
                if part.strip()
            ]
            return cls(current, retired=retired, source=f"environment {MASTER_KEY_ENV}")
        path = Path(data_dir) / MASTER_KEY_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                _create_key_file(path, MasterKey.generate())
            current = _read_key_file(path)
            pending = path.with_name(path.name + _NEXT_SUFFIX)
            if pending.exists():  # a rotation was interrupted: finish it on start
                return cls(_read_key_file(pending), retired=[current], path=path, source=str(path))
        except OSError as exc:
            raise Unavailable(f"cannot read or create the master key file {path}: {exc}") from exc
        return cls(current, path=path, source=str(path))

    @property
    def current_id(self) -> str:
        return self._current.key_id

    @property
    def retired_ids(self) -> frozenset[str]:
        return frozenset(self._retired)

    @property
    def rotating(self) -> bool:
        """Whether a new key is waiting to replace the key file once every data key is
        re-wrapped under it."""
        return self._path is not None and self._pending_path().exists()

    def holds(self, key_id: str) -> bool:
        return key_id == self.current_id or key_id in self._retired

    def new_data_key(self, org_id: OrgId, *, now: datetime) -> tuple[bytes, DataKeyRecord]:
        """A fresh data key for ``org_id`` and its record, wrapped under the current key."""
        data_key = crypto.generate_key()
        return data_key, self.wrap(org_id, data_key, created_at=now)

    def wrap(self, org_id: OrgId, data_key: bytes, *, created_at: datetime) -> DataKeyRecord:
        wrapped = crypto.seal(self._current.material, data_key, crypto.data_key_aad(org_id))
        return DataKeyRecord(org_id, wrapped, self.current_id, created_at)

    def unwrap(self, record: DataKeyRecord) -> bytes:
        """The org's data key.

        Raises:
            Unavailable: "wrong master key" — the record is wrapped under a key this keyring
                does not hold, or it does not unwrap (altered, or moved from another org).
        """
        key = (
            self._current
            if record.master_key_id == self.current_id
            else self._retired.get(record.master_key_id)
        )
        if key is None:
            raise Unavailable(
                f"wrong master key: the data key of organization {record.org_id} is wrapped "
                f"under master key {record.master_key_id}, but the key loaded from "
                f"{self.source} is {self.current_id}; restore the master key that was in use "
                f"(or set {MASTER_KEY_ENV} to it)",
                details={"org_id": record.org_id, "wanted": record.master_key_id},
            )
        try:
            return crypto.open_sealed(
                key.material,
                record.wrapped_key,
                crypto.data_key_aad(record.org_id),
                what=f"data key of organization {record.org_id}",
            )
        except Unavailable as exc:
            raise Unavailable(
                f"wrong master key or corrupted data key: {exc.message}",
                details={"org_id": record.org_id},
            ) from exc

    def rewrap(self, record: DataKeyRecord) -> DataKeyRecord:
        """The same data key wrapped under the current master key."""
        return self.wrap(record.org_id, self.unwrap(record), created_at=record.created_at)

    def begin_rotation(self, new: MasterKey) -> None:
        """Make ``new`` the current key, keeping the old one to unwrap what is not yet
        re-wrapped. With a key file, ``new`` is first written to ``master.key.next``.

        A rotation that is still pending is superseded; its key stays among the retired.

        Raises:
            Unavailable: the new key file cannot be written.
        """
        if self._path is not None:
            try:
                _replace_key_file(self._pending_path(), new)
            except OSError as exc:
                raise Unavailable(f"cannot write the new master key file: {exc}") from exc
        self._retired[self._current.key_id] = self._current
        self._retired.pop(new.key_id, None)
        self._current = new

    def finish_rotation(self) -> None:
        """Every data key is under the current key: make it the key file. Retired keys stay
        in memory, so a data key created concurrently under the old key can still be
        re-wrapped on first use."""
        if self._path is None:
            return
        pending = self._pending_path()
        try:
            if pending.exists():
                os.replace(pending, self._path)
                _fsync_dir(self._path.parent)
        except OSError as exc:
            raise Unavailable(f"cannot install the new master key file: {exc}") from exc

    def _pending_path(self) -> Path:
        assert self._path is not None
        return self._path.with_name(self._path.name + _NEXT_SUFFIX)


def _read_key_file(path: Path) -> MasterKey:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise Unavailable(f"master key file {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise Unavailable(
            f"master key file {path} has mode {mode:04o}; refusing to start until it is "
            f"readable by its owner only (chmod 600 {path})",
            details={"path": str(path), "mode": f"{mode:04o}"},
        )
    return MasterKey.from_text(path.read_text("ascii"), source=f"master key file {path}")


def _write_temp(directory: Path, key: MasterKey) -> Path:
    tmp = directory / f".master.key.{os.getpid()}.{crypto.generate_key().hex()[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (key.to_text() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _create_key_file(path: Path, key: MasterKey) -> None:
    """Create ``path`` holding ``key`` unless another process just created it."""
    tmp = _write_temp(path.parent, key)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # atomic and exclusive: a racing start keeps the first key
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _replace_key_file(path: Path, key: MasterKey) -> None:
    tmp = _write_temp(path.parent, key)
    try:
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
