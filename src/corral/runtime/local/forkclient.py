"""The control plane's handle on the local runtime's fork server (see :mod:`.forkserver`).

:class:`Zygote` starts the server without blocking the event loop, hands it one launch at a
time and turns what it reports back into a per-child :class:`ZygoteChild` whose :meth:`wait`
gives the exit status, as ``asyncio.subprocess.Process.wait`` does for a child of our own.

Only a command the server can run in-process goes to it: ``[sys.executable, "-m", MODULE,
*args]`` (:func:`runnable_module`), with an environment that agrees with the server's on
everything the interpreter reads at start-up (:meth:`Zygote.accepts`). Anything else keeps the
runtime's fork-and-exec path.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence

from corral.domain.errors import InvalidInput, Unavailable
from corral.runtime.local.forkbox import Box
from corral.runtime.local.forkserver import ENV_ROOM_VARIABLE, MAX_FDS, RECORD, Launch

__all__ = ["DEFAULT_PRELOAD", "ENV_ROOM", "Zygote", "ZygoteChild", "runnable_module"]

log = logging.getLogger(__name__)

DEFAULT_PRELOAD = ("asyncio", "json", "nats", "nkeys", "corral.sdk.agent", "corral.agents.general")
"""What the built-in agent imports, first thing and when it connects (``nkeys`` signs)."""
ENV_ROOM = 8192
"""Bytes of padding in the server's environment, so a child can show an environment that
large as its own in /proc; a larger one goes the exec path."""
_READY_TIMEOUT = 30.0  # start-up imports, on a loaded machine
#: For the server to fork and for the child to set itself up (a few ms when all is well).
SPAWN_TIMEOUT = 30.0
_EXIT_TIMEOUT = 5.0  # for the server to leave once its channel is closed


def runnable_module(command: Sequence[str]) -> str | None:
    """The module ``command`` runs if it is ``[sys.executable, "-m", MODULE, *args]``."""
    if len(command) < 3 or command[0] != sys.executable or command[1] != "-m":
        return None
    module = command[2]
    return module if all(part.isidentifier() for part in module.split(".")) else None


def _read_at_start_up(name: str) -> bool:
    """Variables the interpreter reads once, at start-up: a child of the server cannot
    honour a value other than the server's."""
    return name.startswith("PYTHON") or name == "LANG" or name.startswith("LC_")


def _env_block_size(env: Mapping[str, str]) -> int:
    return sum(len(os.fsencode(k)) + len(os.fsencode(v)) + 2 for k, v in env.items())


def _check_strings(launch: Launch) -> None:
    """Refuse what an exec would refuse, before it reaches a child.

    Raises:
        InvalidInput: a NUL byte in an argument or variable, or ``=`` in a variable's name.
    """
    texts = [*launch.argv, launch.cwd, *launch.env, *launch.env.values()]
    if any("\0" in text for text in texts):
        raise InvalidInput("embedded null byte in the agent's command or environment")
    if any("=" in name or not name for name in launch.env):
        raise InvalidInput("illegal environment variable name for the agent")


class ZygoteChild:
    """A process the server forked: its pid, and its exit status once the server reaps it."""

    def __init__(self, pid: int, exited: asyncio.Future[int | None], *, keeper: int = 0) -> None:
        self._pid = pid
        self._exited = exited
        self.lost = False  # the server died first: the kernel killed this child with it
        self.keeper = keeper  # the server's pid when it keeps its children once orphaned

    @property
    def pid(self) -> int:
        return self._pid

    async def wait(self) -> int:
        """The exit status, ``-signal`` if killed; ``-SIGKILL`` (and :attr:`lost`) when the
        server died before it could say, since then the kernel killed the child."""
        status = await asyncio.shield(self._exited)
        if status is None:
            self.lost = True
            return -signal.SIGKILL
        return status


class Zygote:
    """One running fork server; :meth:`start` it, :meth:`spawn` children, :meth:`close` it."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        sock: socket.socket,
        env: Mapping[str, str],
        room: int,
        *,
        forking: int | None = None,
        orphan: float = 0.0,
    ) -> None:
        self._proc = proc
        self._forking = proc.pid if forking is None else forking
        self._sock = sock
        self._env = dict(env)
        self._room = room
        self._orphan = orphan
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._requests: dict[int, asyncio.Future[tuple[int, asyncio.Future[int | None]]]] = {}
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._send_lock = asyncio.Lock()
        self._running = True
        self._closed = False
        self._reader = asyncio.create_task(
            self._read(), name="corral.runtime.local.forkclient:reader"
        )

    @classmethod
    async def start(
        cls,
        env: Mapping[str, str],
        *,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        timeout: float = _READY_TIMEOUT,
        box: Box | None = None,
        orphan: float = 0.0,
    ) -> Zygote:
        """Start a server with ``env`` (the variables every agent gets) and wait until it has
        imported ``preload``.

        The server is an ``asyncio`` subprocess started without a ``preexec_fn``, so starting
        it neither blocks the event loop nor copies the control plane's memory. With ``box``
        (as root) it runs as that uid and sees only what the box keeps (:mod:`.forkbox`). With
        ``orphan`` seconds it outlives the control plane, keeping its children for another
        control plane to adopt (see :mod:`.forkserver`).

        Raises:
            Unavailable: it could not be started or did not get ready within ``timeout``.
        """
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server_env = {**env, "HOME": "/nonexistent", ENV_ROOM_VARIABLE: "." * ENV_ROOM}
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "corral.runtime.local.forkserver",
                str(theirs.fileno()),
                str(os.getpid()),
                *(["--orphan", str(orphan)] if orphan > 0 else []),
                *(["--box", box.encode()] if box is not None else []),
                *preload,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=server_env,
                cwd="/",
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # a terminal's ^C is the control plane's to handle
            )
        except BaseException as exc:
            ours.close()
            if isinstance(exc, OSError | ValueError):
                raise Unavailable(f"cannot start the fork server: {exc}") from exc
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        try:
            record = await asyncio.wait_for(loop.sock_recv(ours, RECORD), timeout)
            word, pid, room, forking = record.decode().split()
            if word != "ready" or int(pid) != proc.pid:
                raise ValueError(f"unexpected greeting {record!r}")
        except BaseException as exc:
            ours.close()
            if proc.returncode is None:
                proc.kill()
            status = await proc.wait()
            if isinstance(exc, OSError | ValueError | TimeoutError):
                raise Unavailable(
                    f"the fork server did not get ready (exit status {status}): {exc!r}"
                ) from exc
            raise
        return cls(proc, ours, env, int(room), forking=int(forking), orphan=orphan)

    @property
    def pid(self) -> int:
        """The process that forks the agents: the one started, or (boxed in its org's uid and
        PID namespace, :mod:`.forkbox`) that one's only child."""
        return self._forking

    @property
    def running(self) -> bool:
        """False once the server has gone (or was closed): start another."""
        return self._running

    def accepts(self, env: Mapping[str, str]) -> bool:
        """Whether a child of this server can be given ``env`` exactly.

        It can unless ``env`` differs from the server's in a variable the interpreter reads
        only at start-up, or is too large to be shown as the child's in /proc.
        """
        if _env_block_size(env) > self._room:
            return False
        names = {n for n in (*env, *self._env) if _read_at_start_up(n)}
        return all(env.get(n) == self._env.get(n) for n in names)

    async def spawn(
        self,
        launch: Launch,
        *,
        log: int,
        procs: Sequence[int],
        pid_namespace: bool = False,
    ) -> ZygoteChild:
        """Have the server fork a child that becomes ``launch``; returns once the child has
        set itself up (session, limits, ids, stdio, environment) and is about to run.

        ``log`` is the open log file (stdout and stderr), ``procs`` the open cgroup files
        the child joins first (writing ``0``, "myself", see :mod:`.limits`); the caller keeps and closes them.
        ``pid_namespace``: the child's sandbox wants a PID namespace, which the server (as
        root) makes as it forks the child, so that the child is the agent with no waiter.

        Raises:
            InvalidInput: ``launch`` holds what no exec would accept (a NUL byte, say).
            Unavailable: the server is gone, or the child could not set itself up (it has
                exited by then).
            OSError: the server could not fork.
        """
        _check_strings(launch)
        if len(procs) + 3 > MAX_FDS:
            raise Unavailable(f"too many cgroup hierarchies to join ({len(procs)})")
        if not self._running:
            raise Unavailable("the fork server is not running")
        request = next(self._ids)
        answer: asyncio.Future[tuple[int, asyncio.Future[int | None]]] = self._loop.create_future()
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        try:
            spec = os.memfd_create("corral-launch", os.MFD_CLOEXEC)
            try:
                _write_all(spec, launch.encode())
                self._requests[request] = answer
                word = f"spawn {request}" + (" pidns" if pid_namespace else "")
                await self._send(word.encode(), [spec, report_w, log, *procs])
            except BaseException:
                self._requests.pop(request, None)
                raise
            finally:
                os.close(spec)
                os.close(report_w)  # the child holds the only other copy now
                report_w = -1
            try:  # a stuck start must not hold a slot; a late answer's child is killed
                async with asyncio.timeout(SPAWN_TIMEOUT):
                    pid, exited = await answer
            except TimeoutError:
                raise Unavailable(
                    f"the fork server did not fork within {SPAWN_TIMEOUT:.0f}s"
                ) from None
            try:
                async with asyncio.timeout(SPAWN_TIMEOUT):
                    report = await self._read_to_end(report_r)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                raise Unavailable(
                    f"the agent's process did not set itself up within {SPAWN_TIMEOUT:.0f}s"
                ) from None
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # abandoned half-way: it must not run
                raise
        finally:
            os.close(report_r)
            if report_w >= 0:
                os.close(report_w)
        if report != b"ok":
            status = await asyncio.shield(exited)  # reaped: nothing of it runs any more
            why = report.decode(errors="replace") or f"it exited with status {status}"
            raise Unavailable(f"the agent's process could not set itself up: {why}")
        return ZygoteChild(pid, exited, keeper=self._forking if self._orphan else 0)

    async def close(self) -> None:
        """End the server; a child it still has is killed by the kernel as it goes."""
        if self._closed:
            return
        self._closed = True
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        self._sock.close()  # end of its channel: the server exits
        if self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), _EXIT_TIMEOUT)
            except TimeoutError:
                log.warning("fork server %d did not exit; killing it", self._proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
        self._lost()

    async def detach(self) -> None:
        """Leave the server and its children running (it was started with ``orphan``): end
        the channel only; the server keeps its children while another control plane adopts
        them, and exits after the last one."""
        if self._closed:
            return
        self._closed = True
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        self._sock.close()
        self._lost()

    # -- the channel --------------------------------------------------------------------------

    async def _send(self, data: bytes, fds: Sequence[int]) -> None:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        async with self._send_lock:
            while True:
                if not self._running:
                    raise Unavailable("the fork server is not running")
                try:
                    self._sock.sendmsg([data], rights)
                    return
                except BlockingIOError:
                    await self._ready(self._sock.fileno(), write=True)
                except OSError as exc:
                    raise Unavailable(f"the fork server is gone: {exc}") from exc

    async def _read_to_end(self, fd: int) -> bytes:
        os.set_blocking(fd, False)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                await self._ready(fd)
                continue
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    async def _ready(self, fd: int, *, write: bool = False) -> None:
        """Until ``fd`` can be read (or written) without blocking."""
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        if write:
            self._loop.add_writer(fd, wake)
        else:
            self._loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            if write:
                self._loop.remove_writer(fd)
            else:
                self._loop.remove_reader(fd)

    async def _read(self) -> None:
        try:
            while True:
                record = await self._loop.sock_recv(self._sock, RECORD)
                if not record:
                    break
                self._dispatch(record)
        except OSError as exc:
            log.warning("fork server %d: channel failed: %s", self._proc.pid, exc)
        finally:
            self._lost()
        if self._proc.returncode is None:  # it closed its end, so it is leaving or broken
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        status = await self._proc.wait()
        log.warning("fork server %d exited with status %s", self._proc.pid, status)

    def _dispatch(self, record: bytes) -> None:
        try:
            self._handle_record(record)
        except ValueError:  # not a number where one belongs: nothing the server would say
            log.warning("fork server %d said %r", self._proc.pid, record)

    def _handle_record(self, record: bytes) -> None:
        match record.decode(errors="replace").split():
            case ["spawned", request, pid]:
                exited: asyncio.Future[int | None] = self._loop.create_future()
                self._exits[int(pid)] = exited
                answer = self._requests.pop(int(request), None)
                if answer is None or answer.done():  # its caller gave up: it must not run
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                else:
                    answer.set_result((int(pid), exited))
            case ["failed", request, code]:
                answer = self._requests.pop(int(request), None)
                if answer is not None and not answer.done():
                    answer.set_exception(OSError(int(code), os.strerror(int(code))))
            case ["exit", pid, status]:
                done = self._exits.pop(int(pid), None)
                if done is not None and not done.done():
                    done.set_result(int(status))
            case _:
                log.warning("fork server %d said %r", self._proc.pid, record)

    def _lost(self) -> None:
        """The server is gone: pending launches fail, and its children's statuses are lost
        (the kernel killed each of them with it)."""
        self._running = False
        for answer in self._requests.values():
            if not answer.done():
                answer.set_exception(Unavailable("the fork server died"))
        for exited in self._exits.values():
            if not exited.done():
                exited.set_result(None)
        self._requests.clear()
        self._exits.clear()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
