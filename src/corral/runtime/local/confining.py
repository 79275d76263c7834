"""The exec path under the sandbox: fork, exec the sandbox's trampoline, which confines itself
and then executes the agent's command.

Why a trampoline and not a ``preexec_fn``: the control plane is multi-threaded, and a PID
namespace needs a fork of its own; a fresh interpreter has neither problem
(:mod:`corral.runtime.sandbox.enter`). The policy reaches it in a pipe, never in argv. A second
pipe carries its verdict: end-of-file at the exec of the agent's command means confined and
running; text means refused, and the start fails with that reason (the trampoline has exited by
then, so nothing is left running).

The trampoline runs as root until it has confined itself, in the agent's workspace, which the
agent can write: so it starts with ``-P`` (no working directory on ``sys.path``) and ``-s`` (no
user site under the agent's ``HOME``), or an agent could plant a module that root would import
at its next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from corral.domain.errors import Conflict, Unavailable
from corral.runtime.local.limits import Entry
from corral.runtime.local.processes import child_setup
from corral.runtime.local.workspaces import AgentPaths
from corral.runtime.sandbox import SandboxPolicy
from corral.runtime.sandbox.enter import NOT_EXECUTABLE

__all__ = ["REPORT_TIMEOUT", "TRAMPOLINE", "confined_exec"]

TRAMPOLINE = (sys.executable, "-P", "-s", "-m", "corral.runtime.sandbox.enter")
#: For the trampoline to start, confine itself and exec (about 60 ms when all is well).
REPORT_TIMEOUT = 30.0


async def confined_exec(
    command: Sequence[str],
    policy: SandboxPolicy,
    join: Entry,
    out: int,
    paths: AgentPaths,
    env: dict[str, str],
) -> asyncio.subprocess.Process:
    """Start ``command`` confined by ``policy``; returns once it runs, confined.

    Raises:
        Unavailable: the sandbox refused (the reason is the trampoline's), or the trampoline
            did not report within :data:`REPORT_TIMEOUT` (it is killed).
        OSError: the trampoline could not be started.
    """
    policy_r, policy_w = os.pipe2(os.O_CLOEXEC)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    proc: asyncio.subprocess.Process | None = None
    try:
        try:
            os.write(policy_w, policy.encode())  # well under a pipe's buffer
        finally:
            os.close(policy_w)
        setup = child_setup(join=join, parent_pid=os.getpid(), ids=None, keep=(policy_r, report_w))
        proc = await asyncio.create_subprocess_exec(
            *TRAMPOLINE,
            str(policy_r),
            str(report_w),
            "--",
            *command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=paths.workspace,
            env=env,
            start_new_session=True,
            preexec_fn=setup,
            close_fds=True,
            pass_fds=(policy_r, report_w),
        )
        os.close(report_w)
        report_w = -1
        try:
            async with asyncio.timeout(REPORT_TIMEOUT):
                why = await _read_to_end(report_r)
        except TimeoutError:
            why = f"the sandbox did not report within {REPORT_TIMEOUT:.0f}s"
        if why:
            await _reap(proc)
            if why.startswith(NOT_EXECUTABLE):  # the host lacks the program: not a fault
                raise Conflict(
                    f"its command {command[0]!r} cannot be run "
                    f"({why.removeprefix(NOT_EXECUTABLE)}); give a path or a program on PATH",
                    details={"command": command[0]},
                )
            raise Unavailable(f"the sandbox refused to start it: {why}")
        return proc
    except BaseException:
        if proc is not None and proc.returncode is None:
            await _reap(proc)
        raise
    finally:
        os.close(policy_r)
        os.close(report_r)
        if report_w >= 0:
            os.close(report_w)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill what is left of a refused start and wait for it: nothing of it may run on."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


async def _read_to_end(fd: int) -> str:
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            ready: asyncio.Future[None] = loop.create_future()

            def wake(ready: asyncio.Future[None] = ready) -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_reader(fd, wake)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            continue
        if not chunk:
            return b"".join(chunks).decode(errors="replace").strip()
        chunks.append(chunk)
