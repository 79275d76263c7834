"""The fork server's child: a fresh fork of the server (:mod:`.forkserver`) turning itself into
the agent's process, and what it is told to become (:class:`Launch`).

Why a module of its own: this is the code that runs between the fork and the agent's first line,
with the agent's set-up report still open to the control plane, and it must be what a fresh
``python -m MODULE`` started by the runtime would have been (:func:`become_agent`). Like the
server, it imports only the standard library and the sandbox.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import json
import os
import resource
import runpy
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

__all__ = ["Launch", "become_agent", "die_with", "env_region"]

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
#: signals whose default action ends a process: a namespace's pid 1 gets none of them unless
#: it handles them, so a child that is one ends itself as if killed (see :func:`_as_pid_1`)
_ENDING = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
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


def env_region() -> tuple[int, int]:
    """Where the kernel keeps this process's initial environment: what /proc/<pid>/environ
    shows (fields 50 and 51 of /proc/self/stat)."""
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rfind(b")") + 2 :].split()  # field 3 onwards
    return int(fields[47]), int(fields[48])


def become_agent(
    sock: socket.socket, fds: list[int], zygote: int, *, alive: tuple[int, int] = (-1, -1)
) -> NoReturn:
    """Turn this fresh fork into the agent's process, run the agent, exit with its status.

    The same steps, in the same order, as the runtime's fork-and-exec path
    (:func:`corral.runtime.local.processes.child_setup` and :mod:`subprocess`): session, limits,
    working directory, stdio, ids, death signal; then what a new interpreter would differ in.
    Until the report says ``ok`` a failure is the control plane's to raise; nothing here may
    ever return into the zygote's loop.
    """
    code, report = 127, -1
    first = os.getpid() == 1  # the first process of a PID namespace the server made for it
    try:
        if first:
            os.close(alive[1])
            die_with(0)  # its parent is outside its namespace: pid 0 from in here
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # the server's, when it may be orphaned
        sock.detach()  # the descriptor is closed below; the object must never close a reused one
        spec, report, log, *procs = fds
        os.setsid()
        host_pid = int(os.readlink("/proc/self"))  # /proc is still the host's
        for fd in procs:  # first: from here on, what this process allocates is the agent's
            os.write(fd, b"0")  # "myself": its one thread (see corral.runtime.local.limits)
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
        _close_inherited(keep=(report, alive[0]) if first else (report,))
        # before the sandbox forks its waiter: that process, the pid the runtime tracks,
        # shows the agent's environment in /proc as well
        _replace_environment(launch.env)
        if launch.sandbox:
            # namespaces, ids, Landlock, seccomp; with a PID namespace this process stays
            # outside as the agent's waiter (the pid the runtime tracks) and never returns
            # here: the agent goes on as the namespace's first process, its death tied to it
            policy = SandboxPolicy.decode(launch.sandbox.encode())
            apply(policy, parent=zygote, first=alive[0] if first else -1)
        else:
            if launch.ids is not None:
                uid, gid = launch.ids
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                _prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # as after an exec: its own uid may see it
            die_with(zygote)
        if first:
            _as_pid_1()
        if launch.note:  # only a child that will run says it started
            os.write(1, launch.note.replace("{pid}", str(host_pid)).encode())
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
    start, end = env_region()
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


def _close_inherited(*, keep: tuple[int, ...] = ()) -> None:
    """Close every descriptor but 0, 1, 2 and ``keep``: the zygote's, and the ones sent for
    set-up."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _as_pid_1() -> None:
    """Handle each signal that would end an ordinary process by ending this one, with the
    status a shell gives a process killed by it (128 + the signal's number).

    The first process of a PID namespace gets from outside only the signals it handles (and
    SIGKILL): without this, the SIGTERM that stops an agent would be dropped and only the
    grace period's SIGKILL would end one that never set a handler of its own. An agent that
    sets its own handler replaces this one, as it would replace the default.
    """

    def end(signum: int, _frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(128 + signum)

    for sig in _ENDING:
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, end)


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
