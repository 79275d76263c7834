"""Landlock: what an agent may open, which TCP ports it may connect to, whom it may signal.

Why Landlock: it is the one kernel mechanism an ordinary user can apply to itself (no root, no
user namespace) to confine files and TCP ports, and its domains also stop a confined process from
ptracing, signalling (ABI 6) or reaching the abstract unix sockets (ABI 6) of anything outside
its own domain. Each agent applies its own ruleset, so two agents of the same uid are in two
domains and cannot reach each other either.

Each ABI version adds rights. A ruleset may only name rights the running kernel knows, so
:func:`ruleset_rights` keeps those of the probed ABI; rights a kernel does not know are simply
not restricted there, which :mod:`corral.runtime.sandbox.probe` reports.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from corral.runtime.sandbox import _libc

__all__ = [
    "FS_READ",
    "FS_READ_WRITE",
    "Rights",
    "abi_version",
    "restrict",
    "ruleset_rights",
]

# filesystem rights (include/uapi/linux/landlock.h) with the ABI that introduced them
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
# rights that apply to a file (a rule on a non-directory may name only these)
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

FS_READ = EXECUTE | READ_FILE | READ_DIR
FS_READ_WRITE = (
    FS_READ
    | WRITE_FILE
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_DIR
    | MAKE_REG
    | MAKE_SOCK
    | MAKE_FIFO
    | MAKE_SYM
    | REFER
    | TRUNCATE
)
# devices such as /dev/null: read, write, and opened with O_TRUNC by open(..., "w")
FS_DEVICE = READ_FILE | WRITE_FILE | TRUNCATE

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


@dataclass(frozen=True, slots=True)
class Rights:
    """What a ruleset handles on one ABI: anything handled and not granted is denied."""

    abi: int
    fs: int
    net: int
    scoped: int


def abi_version() -> int:
    """The Landlock ABI this kernel offers; 0 if Landlock is absent or disabled."""
    try:
        return _libc.syscall("landlock_create_ruleset", 0, 0, _CREATE_RULESET_VERSION)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


def ruleset_rights(abi: int) -> Rights:
    """Every right ABI ``abi`` knows: filesystem (REFER from 2, TRUNCATE from 3, IOCTL_DEV
    from 5), TCP bind/connect (from 4) and signal/abstract-socket scoping (from 6)."""
    if abi < 1:
        raise ValueError("Landlock is not available")
    fs = _FS_BY_ABI[max(v for v in _FS_BY_ABI if v <= abi)]
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    return Rights(abi=abi, fs=fs, net=net, scoped=scoped)


def restrict(
    *,
    read: Iterable[str],
    read_write: Iterable[str],
    devices: Iterable[str] = (),
    tcp_connect: Iterable[int] = (),
    abi: int | None = None,
) -> Rights:
    """Confine this thread (and what it later forks or executes) for good.

    ``read`` paths may be read and executed, ``read_write`` paths fully used, ``devices``
    read and written; a path that does not exist is skipped. TCP: connecting only to
    ``tcp_connect`` ports, binding none. Signals and abstract unix sockets: only within the
    domain. The caller must have set ``PR_SET_NO_NEW_PRIVS`` (or hold CAP_SYS_ADMIN).

    Returns:
        What the ruleset handles, so a caller can report what this kernel left open.

    Raises:
        OSError: a Landlock call failed (naming it); ``ValueError`` if Landlock is absent.
    """
    rights = ruleset_rights(abi_version() if abi is None else abi)
    attr = _RulesetAttr(rights.fs, rights.net, rights.scoped)
    size = 8 if rights.abi < 4 else 16 if rights.abi < 6 else 24
    ruleset = _libc.syscall(
        "landlock_create_ruleset", ctypes.cast(ctypes.pointer(attr), ctypes.c_void_p), size, 0
    )
    try:
        for paths, access in ((read, FS_READ), (read_write, FS_READ_WRITE), (devices, FS_DEVICE)):
            for path in paths:
                _allow_path(ruleset, path, access & rights.fs)
        if rights.net:
            for port in sorted(set(tcp_connect)):
                rule = _NetPortAttr(NET_CONNECT_TCP, port)
                _libc.syscall(
                    "landlock_add_rule",
                    ruleset,
                    _RULE_NET_PORT,
                    ctypes.cast(ctypes.pointer(rule), ctypes.c_void_p),
                    0,
                )
        _libc.syscall("landlock_restrict_self", ruleset, 0)
    finally:
        os.close(ruleset)
    return rights


def _allow_path(ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return  # what this uid cannot reach needs no rule
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= _FILE_RIGHTS
        rule = _PathBeneathAttr(access, fd)
        try:
            _libc.syscall(
                "landlock_add_rule",
                ruleset,
                _RULE_PATH_BENEATH,
                ctypes.cast(ctypes.pointer(rule), ctypes.c_void_p),
                0,
            )
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror} ({path})") from exc
    finally:
        os.close(fd)
