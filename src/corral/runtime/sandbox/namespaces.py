"""Namespaces and mounts: an agent's own view of processes, IPC and the file tree.

Why: Landlock decides what an agent may *open*, but a path it cannot open still shows in
listings and a pathname unix socket it can name may still be connected to. A mount namespace
lets the sandbox put an empty tmpfs over the control plane's data directory (the keys, the
database, the NATS auth, other agents' directories) and bind the agent's own workspace back in
its place, so those names do not exist for it. A PID namespace with its own ``/proc`` hides
every process but the agent's own. For an ordinary user, a user namespace is what allows the
other two: it maps the user's one uid and gid to themselves and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable

from corral.runtime.sandbox import _libc

__all__ = [
    "CLONE_NEWIPC",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "fork_as_first",
    "hide",
    "make_mounts_private",
    "map_own_ids",
    "mount_proc",
    "open_up",
    "outermost",
    "unshare",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000

_PR_SET_DUMPABLE = 4
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


def unshare(flags: int) -> None:
    """Enter new namespaces; with CLONE_NEWPID only children made after this are inside."""
    _libc.unshare(flags)


def fork_as_first(own: int) -> int:
    """Fork a child that is the first process (pid 1) of a new PID namespace, as ``os.fork``
    returns; this process stays where it is, the child's parent, and can fork the next one.

    Why from the parent: a namespace made by the child itself holds only *its* children, so the
    child would have to fork once more and stay behind as a waiter. Made here, the child is the
    agent, with nothing in between. ``own`` is a descriptor of this process's own PID namespace
    (``/proc/self/ns/pid``), entered again after the fork: a process can make only one new PID
    namespace for its children until it does. Needs CAP_SYS_ADMIN (root).
    """
    unshare(CLONE_NEWPID)
    try:
        pid = os.fork()
    except BaseException:
        _libc.setns(own, CLONE_NEWPID)
        raise
    if pid:
        _libc.setns(own, CLONE_NEWPID)
    return pid


def map_own_ids(uid: int, gid: int) -> None:
    """After ``unshare(CLONE_NEWUSER)``: map ``uid``/``gid`` (the ids this process had before)
    to themselves, and nothing else, so files keep their owners and no other id exists.

    ``setgroups`` is denied first, as the kernel requires of an unprivileged writer (and so
    no one in the namespace can drop a group that a file's mode excludes). A process that
    changed ids without an exec is not dumpable, which makes its ``/proc/self`` files root's:
    it is made dumpable for the writes (the sandbox turns that off again later).
    """
    _libc.prctl(_PR_SET_DUMPABLE, 1, what="prctl(PR_SET_DUMPABLE, 1)")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write("/proc/self/gid_map", f"{gid} {gid} 1\n")


def make_mounts_private() -> None:
    """Stop mounts made here from propagating back to the host's namespace (and vice versa)."""
    _libc.mount(None, "/", None, MS_REC | MS_PRIVATE)


def hide(directory: str, *, keep: Iterable[str] = (), resolved: bool = False) -> None:
    """Put an empty tmpfs over ``directory``, then bind each path of ``keep`` that lies under
    it back at its own place. The kept paths are opened first: once covered, they could no
    longer be reached by name. ``resolved``: ``keep`` is already :func:`outermost`'s."""
    directory = os.path.realpath(directory)
    inside = directory.rstrip("/") + "/"
    kept: list[tuple[str, int]] = []
    try:
        for real in keep if resolved else outermost(keep):
            if real.startswith(inside):
                kept.append((real, os.open(real, os.O_PATH | os.O_CLOEXEC)))
        _libc.mount(
            "tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k"
        )
        for real, fd in kept:
            is_dir = os.path.isdir(f"/proc/self/fd/{fd}")
            parent = real if is_dir else os.path.dirname(real)
            os.makedirs(parent, mode=0o755, exist_ok=True)
            if not is_dir:
                os.close(os.open(real, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            _libc.mount(f"/proc/self/fd/{fd}", real, None, MS_BIND | MS_REC)
    finally:
        for _, fd in kept:
            with contextlib.suppress(OSError):
                os.close(fd)


def open_up(keep: Iterable[str], *, uid: int, gid: int) -> list[str]:
    """Make each path of ``keep`` reachable by ``uid``/``gid`` (no supplementary group):
    every outermost ancestor they could not traverse (a 0700 home holding the interpreter, a
    private temporary directory holding the data) is covered by a 0755 tmpfs and the kept
    paths under it are bound back, as bubblewrap builds a root. The agent then sees, there,
    only what it was given. Returns the directories covered.

    Call as root, in a mount namespace of the agent's own, before the identity drop.
    """
    paths = outermost(keep)
    covered: list[str] = []
    checked: dict[str, bool] = {}  # many paths share ancestors: one stat each
    for path in paths:
        parent = os.path.dirname(path)
        ancestors: list[str] = []
        while parent not in ancestors:  # "/" is its own parent
            ancestors.append(parent)
            parent = os.path.dirname(parent)
        for ancestor in reversed(ancestors):  # from "/" down: the outermost refusal
            if ancestor in covered:
                break  # already covered: what lies below it is bound back or created 0755
            if ancestor not in checked:
                checked[ancestor] = _traversable(os.stat(ancestor), uid, gid)
            if not checked[ancestor]:
                covered.append(ancestor)
                break
    for directory in covered:
        hide(directory, keep=paths, resolved=True)
    return covered


def outermost(paths: Iterable[str]) -> list[str]:
    """``paths`` resolved, without those inside another one of them: binding a directory
    back (recursively) brings what lies inside it along, so each costs one mount less."""
    real = sorted({os.path.realpath(p) for p in paths})
    kept: list[str] = []
    for path in real:  # sorted: a directory comes just before what lies inside it
        if kept and (path == kept[-1] or path.startswith(kept[-1].rstrip("/") + "/")):
            continue
        kept.append(path)
    return kept


def _traversable(info: os.stat_result, uid: int, gid: int) -> bool:
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def mount_proc() -> None:
    """Mount a ``/proc`` that shows this PID namespace only (call as its first process)."""
    _libc.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    except OSError as exc:
        raise OSError(exc.errno, f"write {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
