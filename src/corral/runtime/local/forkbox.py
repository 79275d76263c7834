"""The fork server's own box: as root, an organization's fork server runs as that
organization's uid, never as root, and sees nothing of the data directory but that org's own
directory.

Why: every agent the server forks starts as a copy of it. A server running as root would hand
each child root's identity until the child's sandbox drops it; running as the org's uid, the
server itself and everything it forks can never be more than that org, and a flaw in the
server's loop or in a child's set-up cannot reach another organization's files or processes.

How, in the server's first moments (:func:`enter`), while it is still root:

1. a mount namespace of its own, in which every directory the org's uid could not traverse (the
   data directory, a 0700 home holding the interpreter) is covered by an empty tmpfs and only
   what agents need is bound back: the interpreter and its libraries, the paths opened to agents,
   and the org's own directory (:func:`~corral.runtime.sandbox.namespaces.open_up`);
2. the org's uid and gid in every id, no supplementary group, an empty bounding set;
3. a user namespace that maps only that uid and gid to themselves, and a PID namespace of the
   org's own: the server forks once more and goes on as that namespace's first process, while
   the process the control plane started stays outside as a waiter that only waits.

In its user namespace the server holds capabilities over what that namespace owns (its PID
namespace, the mount namespaces its children make), which is what lets it fork each agent as the
first process of a PID namespace of the agent's own (no waiter per agent) and lets each child
build its own mounts; over anything of the host it holds none. Each child drops all of them.

Standard library and the sandbox only, as the server.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
from dataclasses import dataclass
from typing import NoReturn

from corral.runtime.sandbox import identity, namespaces

__all__ = ["Box", "enter", "host_pid"]

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class Box:
    """Whom the server runs as, and what it keeps in view (everything else of a directory it
    could not traverse is hidden)."""

    uid: int
    gid: int
    keep: tuple[str, ...]

    def encode(self) -> str:
        return json.dumps({"uid": self.uid, "gid": self.gid, "keep": list(self.keep)})

    @classmethod
    def decode(cls, text: str) -> Box:
        raw = json.loads(text)
        return cls(int(raw["uid"]), int(raw["gid"]), tuple(str(p) for p in raw["keep"]))


def enter(box: Box, parent: int, *, die_with_parent: bool = True) -> tuple[int, int]:
    """Box this (root, single-threaded) server; return in the boxed server, the first process
    of the org's PID namespace, with the pid the control plane knows it by (the waiter's) and
    the read end of a pipe whose end of file says the waiter is gone. Without
    ``die_with_parent`` (an orphaned server keeps its agents) the waiter outlives the control
    plane too.

    Raises:
        OSError: a step failed; nothing was forked then, and the server must not serve.
    """
    if box.uid == 0 or box.gid == 0:
        raise ValueError("a fork server never runs as uid or gid 0")
    namespaces.unshare(namespaces.CLONE_NEWNS)
    namespaces.make_mounts_private()
    namespaces.open_up(box.keep, uid=box.uid, gid=box.gid)
    identity.switch_ids(box.uid, box.gid)
    namespaces.unshare(namespaces.CLONE_NEWUSER | namespaces.CLONE_NEWPID)
    namespaces.map_own_ids(box.uid, box.gid)
    identity.not_dumpable()
    started = os.getpid()
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid:
        os.close(alive_r)
        _wait(pid, parent if die_with_parent else None, keep=alive_w)
    os.close(alive_w)
    os.setsid()  # a session of its own, as the server had before (the waiter keeps its)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    poller = select.poll()
    poller.register(alive_r, select.POLLIN)
    if poller.poll(0):
        raise ProcessLookupError("the fork server's waiter is gone")
    return started, alive_r


def host_pid(pid: int) -> int:
    """The pid a child of this server (``pid`` in the server's own PID namespace) has on the
    host, for the control plane: from its pidfd's entry in /proc, which is still the host's
    (this process never mounts a /proc of its own)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return pid
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    finally:
        os.close(fd)
    return pid


def _wait(child: int, parent: int | None, *, keep: int) -> NoReturn:
    """The waiter: the process the control plane started, outside the org's PID namespace.
    It holds the pipe that tells the server it is there, dies with the control plane (given
    its ``parent``), and exits as the server did."""
    code = 1
    try:
        if parent is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:
                raise ProcessLookupError(f"parent {parent} is gone")
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 20)
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except ChildProcessError:
                status = 0
                break
            except InterruptedError:
                continue
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
    finally:
        with contextlib.suppress(OSError):
            os.close(keep)
        os._exit(code)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl({option}): {os.strerror(code)}")
