"""The local runtime's fork server ("zygote"): a small process that has already imported what
agents import, and forks one child per agent on request.

Why: started the plain way, each agent cost a fork of the whole control plane (the kernel copies
its page tables while the event loop waits) and then a fresh interpreter that spent ~90 ms
importing the SDK and the NATS client before the agent did anything. The zygote pays the
imports once; its child is ready to run the agent's module right after the fork, and shares
those modules' pages with its siblings (copy-on-write, kept clean by ``gc.freeze``), so each
agent's private memory is smaller as well.

:class:`corral.runtime.local.forkclient.Zygote` starts it, with the environment agents get and
in a session of its own, as::

    python -m corral.runtime.local.forkserver CHANNEL_FD PARENT_PID [--orphan SECONDS] [MODULE ...]

``CHANNEL_FD`` is its end of a ``SOCK_SEQPACKET`` socket pair. It imports the MODULEs, says
``ready <pid> <env-room> <forking-pid>`` (the pid it was started as, and the one that forks:
the same unless it runs boxed, :mod:`.forkbox`) and then serves, one record per message:

- ``spawn <id> [pidns]``, carrying descriptors (``SCM_RIGHTS``): the launch description, the
  set-up report pipe, the log file and the agent's cgroup files (``tasks`` or ``cgroup.procs``,
  see :mod:`.limits`). It forks, closes its copies and answers ``spawned <id> <pid>``
  (``failed <id> <errno>`` if it cannot fork). With ``pidns`` (a sandboxed agent), where it
  may (as root), the child is forked as the first process of a PID namespace of its own, so
  the sandbox needs no second fork and no waiter.
- whenever a child ends: ``exit <pid> <returncode>`` (negative: killed by that signal), since
  the zygote, as the parent, is the only process that can learn it.

What keeps it safe:

- It knows nothing of any agent. The launch description (argv, environment, directories, ids,
  rlimits) is a memfd the control plane wrote and only the child reads, and the child reports
  its set-up straight to the control plane. The zygote only passes descriptors along, so no
  credential, environment or name of one agent is ever in memory that a later child inherits
  (the credentials themselves never leave their 0600 file).
- It is single-threaded and never runs an event loop: it blocks in ``poll`` on the channel and
  a SIGCHLD wake-up pipe, so a fork never copies a lock another thread held. It closes every
  descriptor it was started with but stdio and its channel, and refuses to serve if a
  preloaded module started a thread or kept a descriptor open.
- It dies with the control plane (``PR_SET_PDEATHSIG``, then a check that its parent is still
  the process that started it), and each child does the same towards the zygote: kill -9 of the
  control plane ends the zygote, and that ends every agent.
- Except with ``--orphan SECONDS`` (replicated control planes, where another replica adopts the
  agents of a leader that died): then it outlives the control plane, and once its channel is
  gone it only reaps its children, exiting when the last one has ended. Its children stay
  supervised: an adopting control plane says so with SIGUSR1 at least every SECONDS; when none
  has for that long, the zygote exits, and the kernel kills every child it leaves.

A child becomes what ``python -m MODULE`` would have been in a fresh process started by the
runtime (:func:`_become_agent`), then runs the module as ``__main__`` and exits with its status.

This module imports only the standard library and the sandbox (itself standard library only):
nothing of the control plane enters the zygote. The sandbox is imported here, at start, so its
pages are shared by every child that applies it.
"""

from __future__ import annotations

import array
import contextlib
import errno
import gc
import importlib
import os
import select
import signal
import socket
import sys
import time

from corral.runtime.local import forkbox
from corral.runtime.local.forkchild import Launch, become_agent, die_with, env_region
from corral.runtime.sandbox import identity, namespaces, seccomp

__all__ = ["ENV_ROOM_VARIABLE", "MAX_FDS", "RECORD", "Launch", "die_with", "main"]

ENV_ROOM_VARIABLE = "CORRAL_ZYGOTE_ENV_ROOM"
"""Padding in the zygote's own environment: the room a child rewrites with the agent's, so
that ``/proc/<pid>/environ`` shows what the agent really has (see :func:`_show_environment`)."""
MAX_FDS = 64  # per request: launch description, report pipe, log, one per cgroup hierarchy
RECORD = 256  # bytes: the longest message either side sends
_CAP_SYS_ADMIN = 21


# -- the zygote -----------------------------------------------------------------------------


#: Modules the preloads would import only for what agents never use: the NATS client imports
#: aiohttp for its websocket transport (agents speak plain NATS), which was more than a third
#: of what an organization's fork server spent starting (CPU, and 9 MiB of memory). They are
#: kept out while preloading and importable again afterwards, so an agent that imports one
#: itself gets it.
_UNUSED_BY_PRELOADS = ("aiohttp",)


def _preload(names: list[str]) -> None:
    blocked = [m for m in _UNUSED_BY_PRELOADS if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None  # type: ignore[assignment]  # an import of it fails at once
    try:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as exc:  # a preload only saves time; the child imports the rest
                _say(f"not preloading {name}: {exc!r}")
    finally:
        for m in blocked:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]


def main(args: list[str]) -> int:
    channel, parent, preload = int(args[0]), int(args[1]), args[2:]
    box = None
    orphan = 0.0
    if preload[:1] == ["--orphan"]:  # outlive the control plane (see the module's docstring)
        orphan, preload = float(preload[1]), preload[2:]
    if preload[:1] == ["--box"]:  # as root: run as the organization's uid (see forkbox)
        box, preload = forkbox.Box.decode(preload[1]), preload[2:]
    adoption = _Adoption(orphan)
    try:
        if not orphan:
            die_with(parent)
    except OSError as exc:
        _say(str(exc))
        return 1
    for fd in _open_fds() - {0, 1, 2, channel}:
        os.close(fd)  # strays from whatever started us (uvloop's spawn does not close them)
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]  # ``-m`` put our working directory first; a child puts its own there
    sock = socket.socket(fileno=channel)
    _preload(preload)
    seccomp.build()  # once here, not in every child
    known, alive = os.getpid(), -1  # the pid the control plane started
    if box is not None:
        try:
            known, alive = forkbox.enter(box, parent, die_with_parent=not orphan)
        except (OSError, ValueError) as exc:
            _say(f"cannot run as the organization's uid {box.uid}: {exc}")
            return 1
    spawner = _Spawner(boxed=box is not None)
    problem = _unfit_to_fork({0, 1, 2, channel, *spawner.fds, *([alive] if alive >= 0 else [])})
    if problem:
        _say(problem)
        return 1
    start, end = env_region()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, _on_child)
    if orphan:
        signal.signal(signal.SIGUSR1, adoption.renew)
    # the pid it was started as, and (boxed, in a PID namespace of its own) its own on the host
    forking = int(os.readlink("/proc/self"))  # its /proc is still the host's
    try:
        sock.send(f"ready {known} {end - start} {forking}".encode())
    except OSError as exc:  # the control plane is gone already (with --orphan, alive too)
        _say(str(exc))
        return 1
    gc.collect()
    gc.freeze()  # what is loaded now is shared with every child: keep the collector off it
    try:
        _serve(sock, wake_r, spawner)
    except OSError as exc:  # the control plane is gone; our children die with us
        if not orphan:
            _say(str(exc))
            return 1
    if orphan:
        sock.close()
        adoption.renew(signal.SIGUSR1, None)  # the window starts when the channel ends
        _keep_children(wake_r, spawner, adoption)
    return 0


class _Adoption:
    """Until when an orphaned server keeps its children: SECONDS after the last SIGUSR1."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.until = 0.0

    def renew(self, signum: int, frame: object) -> None:
        self.until = time.monotonic() + self.seconds


def _keep_children(wake: int, spawner: _Spawner, adoption: _Adoption) -> None:
    """The channel is gone: reap children until none is left, or until nobody has adopted
    them for ``adoption.seconds`` (returning then ends them: their death signal)."""
    poller = select.poll()
    poller.register(wake, select.POLLIN)
    while spawner.children:
        left = adoption.until - time.monotonic()
        if left <= 0:
            _say(f"no control plane adopted {len(spawner.children)} agent(s); ending them")
            return
        poller.poll(int(left * 1000) + 1)
        with contextlib.suppress(BlockingIOError):
            while os.read(wake, 512):
                pass
        _reap(None, spawner)


def _say(text: str) -> None:
    """A line on the zygote's stderr, which is the control plane's."""
    sys.stderr.write(f"corral zygote {os.getpid()}: {text}\n")
    sys.stderr.flush()


def _on_child(signum: int, frame: object) -> None:
    """Nothing: the wake-up pipe is what tells ``poll`` a child ended."""


def _unfit_to_fork(expected: set[int]) -> str:
    if len(os.listdir("/proc/self/task")) != 1:  # C threads too, not only Python's
        return "a preloaded module started a thread; a fork would copy its locks"
    extra = sorted(_open_fds() - expected)
    if extra:
        named = ", ".join(f"{fd} ({_target(fd)})" for fd in extra)
        return f"a preloaded module keeps descriptors open, which a child closes: {named}"
    return ""


def _target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def _open_fds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is closed by now
            os.fstat(int(name))
            found.add(int(name))
    return found


class _Spawner:
    """How this server forks: plainly, or (as root) each child the first process of a PID
    namespace of its own. ``fds``: what it keeps open for that, its own PID namespace and a
    pipe whose write end only it holds, so that such a child, which has no parent pid to
    check, learns from the read end's end of file that the server is gone."""

    def __init__(self, *, boxed: bool) -> None:
        self.own = self.alive_r = self.alive_w = -1
        self.boxed = boxed  # in a PID namespace of its own: its children's pids are not the host's
        self.host: dict[int, int] = {}  # a child's pid here -> on the host, while boxed
        self.children: set[int] = set()  # pids here, until reaped
        if not identity.capabilities(every_set=False)["effective"] >> _CAP_SYS_ADMIN & 1:
            return  # an ordinary user's child makes its namespaces in a user namespace
        self.own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.alive_r, self.alive_w = os.pipe2(os.O_CLOEXEC)

    @property
    def fds(self) -> set[int]:
        return {fd for fd in (self.own, self.alive_r, self.alive_w) if fd >= 0}

    def fork(self, pid_namespace: bool) -> int:
        """Fork; in the parent, the child's pid on the host."""
        made = pid_namespace and self.own >= 0
        pid = namespaces.fork_as_first(self.own) if made else os.fork()
        if pid > 0:
            self.children.add(pid)
        if pid and self.boxed:
            self.host[pid] = forkbox.host_pid(pid)
            return self.host[pid]
        return pid

    def ended(self, pid: int) -> int:
        """The host's pid of a child that ended (``pid`` as ``waitpid`` gave it)."""
        self.children.discard(pid)
        return self.host.pop(pid, pid)


def _serve(sock: socket.socket, wake: int, spawner: _Spawner) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == wake:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake, 512):
                        pass
                _reap(sock, spawner)
            elif not _handle(sock, spawner):
                return


def _reap(sock: socket.socket | None, spawner: _Spawner) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        host = spawner.ended(pid)
        if sock is not None:
            sock.send(f"exit {host} {code}".encode())


def _handle(sock: socket.socket, spawner: _Spawner) -> bool:
    """Serve one request; False when the control plane closed the channel."""
    msg, ancdata, flags, _ = sock.recvmsg(RECORD, socket.CMSG_SPACE(MAX_FDS * 4))
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    words = msg.split()
    options = words[2:]
    if (
        not msg
        or len(words) < 2
        or words[0] != b"spawn"
        or not words[1].isdigit()
        or options not in ([], [b"pidns"])
    ):
        for fd in fds:
            os.close(fd)
        if msg:
            _say(f"ignoring request {msg!r}")
        return bool(msg)
    request = words[1].decode()
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(fds) < 3:
        for fd in fds:
            os.close(fd)
        sock.send(f"failed {request} {errno.EINVAL}".encode())
        return True
    zygote = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = spawner.fork(pid_namespace=bool(options))
    except OSError as exc:
        pid = -(exc.errno or errno.EAGAIN)
    if pid == 0:
        become_agent(sock, list(fds), zygote, alive=(spawner.alive_r, spawner.alive_w))
    for fd in fds:
        os.close(fd)
    if pid < 0:
        sock.send(f"failed {request} {-pid}".encode())
    else:
        sock.send(f"spawned {request} {pid}".encode())
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
