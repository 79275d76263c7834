"""Who the agent is: its own uid and gid, no capability in any set, no way to gain one back.

Why each step: root switching uid clears the permitted and effective capabilities, but not the
inheritable set or the bounding set, and a user namespace's first process holds every capability
inside it. So the sandbox clears the bounding set (while it still may), the ambient set, then
sets all three others to empty, and checks with ``capget`` and ``PR_CAP_AMBIENT_IS_SET`` that
nothing is left rather than trusting the sequence. ``PR_SET_NO_NEW_PRIVS`` makes setuid files
and file capabilities inert on exec; ``PR_SET_DUMPABLE`` 0 keeps other processes of the same
uid that are outside the agent's Landlock domain from reading its memory and ``/proc`` files,
and suppresses core dumps of its secrets.
"""

from __future__ import annotations

import ctypes
import errno
import os

from corral.runtime.sandbox import _libc

__all__ = ["capabilities", "drop_capabilities", "no_new_privs", "not_dumpable", "switch_ids"]

_PR_SET_DUMPABLE = 4
_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_IS_SET = 1
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522
_CAP_SETPCAP = 8


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capabilities(*, every_set: bool = True) -> dict[str, int]:
    """This thread's capability sets as bit masks: effective, permitted, inheritable, and with
    ``every_set`` also ambient and bounding (one ``prctl`` per capability)."""
    header = _Header(_CAP_VERSION_3, 0)
    data = (_Data * 2)()
    _libc.syscall(
        "capget",
        ctypes.cast(ctypes.pointer(header), ctypes.c_void_p),
        ctypes.cast(data, ctypes.c_void_p),
    )
    sets = {
        name: getattr(data[0], name) | getattr(data[1], name) << 32
        for name in ("effective", "permitted", "inheritable")
    }
    if not every_set:
        return sets
    sets["ambient"] = sets["bounding"] = 0
    for cap in range(64):
        try:
            if _libc.prctl(_PR_CAPBSET_READ, cap):
                sets["bounding"] |= 1 << cap
            if _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_IS_SET, cap):
                sets["ambient"] |= 1 << cap
        except OSError as exc:  # EINVAL past the kernel's last capability
            if exc.errno != errno.EINVAL:
                raise
            break
    return sets


def switch_ids(uid: int, gid: int) -> None:
    """As root: clear the bounding set (only possible while privileged), then become
    ``uid``/``gid`` with no supplementary group, in every id (real, effective, saved)."""
    if uid == 0 or gid == 0:
        raise ValueError("an agent never runs as uid or gid 0")
    _clear_bounding_set()
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def drop_capabilities() -> None:
    """Empty every capability set this thread may still hold, and check that it worked.

    Raises:
        PermissionError: a set is not empty afterwards (naming it).
    """
    if _capable(_CAP_SETPCAP):
        _clear_bounding_set()
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, what="prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    header = _Header(_CAP_VERSION_3, 0)
    data = (_Data * 2)()
    _libc.syscall(
        "capset",
        ctypes.cast(ctypes.pointer(header), ctypes.c_void_p),
        ctypes.cast(data, ctypes.c_void_p),
    )
    # ambient is a subset of permitted and inheritable: empty when they are
    left = {k: v for k, v in capabilities(every_set=False).items() if v}
    if left:
        raise PermissionError(errno.EPERM, f"capabilities left after dropping: {left}")


def no_new_privs() -> None:
    _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, what="prctl(PR_SET_NO_NEW_PRIVS)")
    if _libc.prctl(_PR_GET_NO_NEW_PRIVS) != 1:
        raise PermissionError(errno.EPERM, "PR_SET_NO_NEW_PRIVS did not take")


def not_dumpable() -> None:
    _libc.prctl(_PR_SET_DUMPABLE, 0, what="prctl(PR_SET_DUMPABLE, 0)")


def _capable(cap: int) -> bool:
    return bool(capabilities(every_set=False)["effective"] >> cap & 1)


def _clear_bounding_set() -> None:
    for cap in range(64):
        try:
            _libc.prctl(_PR_CAPBSET_DROP, cap, what=f"prctl(PR_CAPBSET_DROP, {cap})")
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            break
