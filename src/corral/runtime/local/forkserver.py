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

    python -m corral.runtime.local.forkserver CHANNEL_FD PARENT_PID [MODULE ...]

``CHANNEL_FD`` is its end of a ``SOCK_SEQPACKET`` socket pair. It imports the MODULEs, says
``ready <pid> <env-room>`` and then serves, one record per message:

- ``spawn <id>``, carrying descriptors (``SCM_RIGHTS``): the launch description, the set-up
  report pipe, the log file and the agent's ``cgroup.procs`` files. It forks, closes its copies
  and answers ``spawned <id> <pid>`` (``failed <id> <errno>`` if it cannot fork).
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

A child becomes what ``python -m MODULE`` would have been in a fresh process started by the
runtime (:func:`_become_agent`), then runs the module as ``__main__`` and exits with its status.

This module imports only the standard library and the sandbox (itself standard library only):
nothing of the control plane enters the zygote. The sandbox is imported here, at start, so its
pages are shared by every child that applies it.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import ctypes
import errno
import gc
import importlib
import json
import os
import resource
import runpy
import select
import signal
import site
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, NoReturn

from corral.runtime.sandbox import SandboxPolicy, apply

__all__ = ["ENV_ROOM_VARIABLE", "MAX_FDS", "RECORD", "Launch", "die_with", "main"]

ENV_ROOM_VARIABLE = "CORRAL_ZYGOTE_ENV_ROOM"
"""Padding in the zygote's own environment: the room a child rewrites with the agent's, so
that ``/proc/<pid>/environ`` shows what the agent really has (see :func:`_show_environment`)."""
MAX_FDS = 64  # per request: launch description, report pipe, log, one per cgroup hierarchy
RECORD = 256  # bytes: the longest message either side sends

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything agent-specific about one child; the control plane writes it to a memfd that
    only that child reads."""

    module: str  # run as ``__main__``, as ``python -m`` would
    argv: tuple[str, ...]  # ``sys.argv``; its first item is replaced by the module's path
    env: dict[str, str]  # the whole environment; nothing of the zygote's stays
    cwd: str  # the working directory, also first on ``sys.path`` (as ``-m`` puts it there)
    ids: tuple[int, int] | None  # (uid, gid) to switch to, or None to keep the runtime's
    rlimits: tuple[tuple[int, int], ...] = ()  # (resource, soft and hard limit)
    note: str = ""  # the runtime's line for the log, written before the agent runs ("{pid}")
    sandbox: str = ""  # the agent's SandboxPolicy as JSON; "" runs it unconfined (sandbox off)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "module": self.module,
                "argv": list(self.argv),
                "env": self.env,
                "cwd": self.cwd,
                "ids": list(self.ids) if self.ids is not None else None,
                "rlimits": [list(r) for r in self.rlimits],
                "note": self.note,
                "sandbox": self.sandbox,
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Launch:
        raw: dict[str, Any] = json.loads(data)
        ids = raw["ids"]
        return cls(
            module=str(raw["module"]),
            argv=tuple(str(a) for a in raw["argv"]),
            env={str(k): str(v) for k, v in raw["env"].items()},
            cwd=str(raw["cwd"]),
            ids=(int(ids[0]), int(ids[1])) if ids is not None else None,
            rlimits=tuple((int(r), int(v)) for r, v in raw["rlimits"]),
            note=str(raw["note"]),
            sandbox=str(raw.get("sandbox", "")),
        )


def die_with(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent goes; fail if it already has.

    Set after any change of ids (the kernel clears the request then), and checked against
    ``parent`` because a parent that died just before the request would go unnoticed.
    """
    if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SET_PDEATHSIG): {os.strerror(code)}")
    if os.getppid() != parent:
        raise ProcessLookupError(f"parent {parent} is gone")


# -- the zygote -----------------------------------------------------------------------------


def main(args: list[str]) -> int:
    channel, parent, preload = int(args[0]), int(args[1]), args[2:]
    try:
        die_with(parent)
    except OSError as exc:
        _say(str(exc))
        return 1
    for fd in _open_fds() - {0, 1, 2, channel}:
        os.close(fd)  # strays from whatever started us (uvloop's spawn does not close them)
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]  # ``-m`` put our working directory first; a child puts its own there
    sock = socket.socket(fileno=channel)
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a preload only saves time; the child imports what it needs
            _say(f"not preloading {name}: {exc!r}")
    problem = _unfit_to_fork({0, 1, 2, channel})
    if problem:
        _say(problem)
        return 1
    start, end = _env_region()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, _on_child)
    sock.send(f"ready {os.getpid()} {end - start}".encode())
    gc.collect()
    gc.freeze()  # what is loaded now is shared with every child: keep the collector off it
    try:
        _serve(sock, wake_r)
    except OSError as exc:  # the control plane is gone; our children die with us
        _say(str(exc))
        return 1
    return 0


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


def _env_region() -> tuple[int, int]:
    """Where the kernel keeps this process's initial environment: what /proc/<pid>/environ
    shows (fields 50 and 51 of /proc/self/stat)."""
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rfind(b")") + 2 :].split()  # field 3 onwards
    return int(fields[47]), int(fields[48])


def _serve(sock: socket.socket, wake: int) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == wake:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake, 512):
                        pass
                _reap(sock)
            elif not _handle(sock):
                return


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(f"exit {pid} {os.waitstatus_to_exitcode(status)}".encode())


def _handle(sock: socket.socket) -> bool:
    """Serve one request; False when the control plane closed the channel."""
    msg, ancdata, flags, _ = sock.recvmsg(RECORD, socket.CMSG_SPACE(MAX_FDS * 4))
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    words = msg.split()
    if not msg or len(words) != 2 or words[0] != b"spawn" or not words[1].isdigit():
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
        pid = os.fork()
    except OSError as exc:
        pid = -(exc.errno or errno.EAGAIN)
    if pid == 0:
        _become_agent(sock, list(fds), zygote)
    for fd in fds:
        os.close(fd)
    if pid < 0:
        sock.send(f"failed {request} {-pid}".encode())
    else:
        sock.send(f"spawned {request} {pid}".encode())
    return True


# -- the child ------------------------------------------------------------------------------


def _become_agent(sock: socket.socket, fds: list[int], zygote: int) -> NoReturn:
    """Turn this fresh fork into the agent's process, run the agent, exit with its status.

    The same steps, in the same order, as the runtime's fork-and-exec path
    (:func:`corral.runtime.local.processes.child_setup` and :mod:`subprocess`): session, limits,
    working directory, stdio, ids, death signal; then what a new interpreter would differ in.
    Until the report says ``ok`` a failure is the control plane's to raise; nothing here may
    ever return into the zygote's loop.
    """
    code, report = 127, -1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.detach()  # the descriptor is closed below; the object must never close a reused one
        spec, report, log, *procs = fds
        os.setsid()
        me = str(os.getpid()).encode()
        for fd in procs:  # first: from here on, what this process allocates is the agent's
            os.write(fd, me)
        launch = Launch.decode(_read_all(spec))
        for res, value in launch.rlimits:
            resource.setrlimit(res, (value, value))
        os.chdir(launch.cwd)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        # nothing of the server (its channel, the launch, the cgroup files) past this point:
        # only stdio and the report, which goes before any of the agent's code can run
        _close_inherited(keep=report)
        # before the sandbox forks its waiter: that process, the pid the runtime tracks,
        # shows the agent's environment in /proc as well
        _replace_environment(launch.env)
        if launch.sandbox:
            # namespaces, ids, Landlock, seccomp; with a PID namespace this process stays
            # outside as the agent's waiter (the pid the runtime tracks) and never returns
            # here: the agent goes on as the namespace's first process, its death tied to it
            apply(SandboxPolicy.decode(launch.sandbox.encode()), parent=zygote)
        else:
            if launch.ids is not None:
                uid, gid = launch.ids
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                _prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # as after an exec: its own uid may see it
            die_with(zygote)
        if launch.note:  # only a child that will run says it started
            os.write(1, launch.note.replace("{pid}", str(os.getpid())).encode())
        os.write(report, b"ok")
        os.close(report)
        report = -1
        # from here the agent's own code may run (a .pth in its user site, in its writable
        # HOME): it finds only stdio open, as after an exec
        _as_if_started_with_m(launch)
        code = _run(launch.module)
    except BaseException as exc:
        if report >= 0:
            with contextlib.suppress(OSError):
                os.write(report, f"{type(exc).__name__}: {exc}".encode(errors="replace")[:4000])
        else:
            with contextlib.suppress(BaseException):
                traceback.print_exc()
    finally:
        os._exit(code)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    data = b""
    while len(data) < size:
        chunk = os.pread(fd, size - len(data), len(data))
        if not chunk:
            break
        data += chunk
    return data


def _replace_environment(env: dict[str, str]) -> None:
    """The agent's environment and nothing else, in ``os.environ``, the C library's and
    ``/proc/<pid>/environ``."""
    os.environ.clear()
    clearenv = getattr(_libc, "clearenv", None)
    if clearenv is not None:
        clearenv()  # drops entries os.environ never held (those without "=")
    os.environ.update(env)
    _show_environment(env)


def _show_environment(env: dict[str, str]) -> None:
    """Write the agent's environment over the zygote's initial one, which is what the kernel
    shows as /proc/<pid>/environ; the zygote was started with padding to make room for it.

    Nothing points into that memory any more (the environment was just rebuilt in the heap),
    and what the tools that find agents by their environment read is then the truth.
    """
    start, end = _env_region()
    block = b"".join(os.fsencode(k) + b"=" + os.fsencode(v) + b"\0" for k, v in env.items())
    if len(block) > end - start:
        raise OSError(errno.E2BIG, "the environment does not fit the zygote's room for it")
    ctypes.memmove(start, block.ljust(end - start, b"\0"), end - start)


def _as_if_started_with_m(launch: Launch) -> None:
    """Undo what a fresh ``python -m`` would not have: the zygote's argv, working directory
    on ``sys.path``, user site, cached temporary directory and time zone."""
    sys.argv = list(launch.argv)
    sys.path.insert(0, launch.cwd)
    if site.ENABLE_USER_SITE:  # the zygote's HOME had none; the agent's HOME may
        site.USER_BASE = site.USER_SITE = None
        user_site = site.getusersitepackages()
        if os.path.isdir(user_site):
            site.addsitedir(user_site)
    tempfile.tempdir = None  # found again, from the agent's TMPDIR, when first needed
    time.tzset()


def _close_inherited(*, keep: int = -1) -> None:
    """Close every descriptor but 0, 1, 2 and ``keep``: the zygote's, and the ones sent for
    set-up."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _run(module: str) -> int:
    """Run ``module`` as ``__main__`` and end as the interpreter would; returns the status."""
    interrupted = False
    _forget_preloaded(module)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _status(exc.code)
    except BaseException as exc:  # the traceback on stderr, as the interpreter prints it
        sys.excepthook(type(exc), exc, exc.__traceback__)
        code, interrupted = 1, isinstance(exc, KeyboardInterrupt)
    with contextlib.suppress(BaseException):
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()  # non-daemon threads finish first, as at interpreter exit
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    if interrupted:  # as the interpreter does: end by the signal, so the parent sees it
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _forget_preloaded(module: str) -> None:
    """Let ``module`` run as ``__main__`` as in a fresh interpreter, where it is not also
    imported under its own name (runpy would warn into the agent's log, and the agent would
    find a second, stale copy of itself)."""
    for name in (module, f"{module}.__main__"):
        loaded = sys.modules.get(name)
        if loaded is None or hasattr(loaded, "__path__"):
            continue  # a package is imported before its __main__ runs, preloaded or not
        del sys.modules[name]
        parent, _, child = name.rpartition(".")
        if parent and getattr(sys.modules.get(parent), child, None) is loaded:
            delattr(sys.modules[parent], child)


def _status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    with contextlib.suppress(BaseException):
        sys.stderr.write(f"{code}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
