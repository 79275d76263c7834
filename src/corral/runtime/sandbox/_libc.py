"""The few raw system calls the sandbox needs, through ctypes, with errors as ``OSError``.

Why here: Python's ``os`` module has no ``prctl``, ``capget``, ``mount``, Landlock or seccomp,
and the fork server may import nothing but the standard library. Each wrapper raises an
``OSError`` that carries the errno and names the call, so the step that failed can say why.
"""

from __future__ import annotations

import ctypes
import os

__all__ = [
    "ARCH",
    "NR",
    "check",
    "libc",
    "mount",
    "prctl",
    "setns",
    "syscall",
    "unshare",
]

libc = ctypes.CDLL(None, use_errno=True)
_syscall = libc.syscall
_syscall.restype = ctypes.c_long
_prctl = libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_mount = libc.mount
_mount.restype = ctypes.c_int
_mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_unshare = libc.unshare
_unshare.restype = ctypes.c_int
_unshare.argtypes = [ctypes.c_int]
_setns = libc.setns
_setns.restype = ctypes.c_int
_setns.argtypes = [ctypes.c_int, ctypes.c_int]

ARCH = os.uname().machine

# The numbers the sandbox itself calls. Landlock's and the newer calls are the same on both
# architectures (the unified table from 5.x on); the older ones differ.
_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {"capget": 125, "capset": 126, "seccomp": 317},
    "aarch64": {"capget": 90, "capset": 91, "seccomp": 277},
}
_COMMON = {
    "landlock_create_ruleset": 444,
    "landlock_add_rule": 445,
    "landlock_restrict_self": 446,
}
NR: dict[str, int] = {**_COMMON, **_NUMBERS.get(ARCH, {})}


def check(result: int, what: str) -> int:
    """Raise ``OSError(errno, "what: reason")`` if a libc call returned -1."""
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def syscall(name: str, *args: int | ctypes.c_void_p | ctypes.Array[ctypes.c_char]) -> int:
    """Call ``name`` by number; integers are passed as ``long``."""
    number = NR.get(name)
    if number is None:
        raise OSError(38, f"{name}: not known on {ARCH}")  # ENOSYS
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return check(int(_syscall(ctypes.c_long(number), *converted)), name)


def prctl(option: int, a: int = 0, b: int = 0, c: int = 0, d: int = 0, *, what: str = "") -> int:
    return check(_prctl(option, a, b, c, d), what or f"prctl({option})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    def enc(value: str | None) -> bytes | None:
        return None if value is None else os.fsencode(value)

    check(
        _mount(enc(source), enc(target), enc(fstype), flags, enc(data) if data else None),
        f"mount {fstype or source or ''} on {target}",
    )


def unshare(flags: int) -> None:
    check(_unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    check(_setns(fd, nstype), f"setns({nstype:#x})")
