"""Apply a :class:`SandboxPolicy` to the calling process: the one entry point both launch paths
use, the fork server's child before it runs the agent and the ``enter`` trampoline before it
executes the agent's command.

Why this order: namespaces first, while the process still has the privilege to make them (root,
or the capabilities a new user namespace gives); then mounts, which need that privilege inside
them; then the identity drop, which gives up every capability; then ``no_new_privs``, which
Landlock and seccomp require of an unprivileged process; Landlock after the mounts so its rules
name the final tree; seccomp last, because it refuses ``mount``, ``unshare`` and the rest the
earlier steps use.

A PID namespace holds the children of the process that made it, not that process. Where the
parent can make it (a fork server with CAP_SYS_ADMIN over its namespaces), it does so as it
forks (:func:`~corral.runtime.sandbox.namespaces.fork_as_first`) and tells :func:`apply`
(``first``): the child is already the namespace's pid 1 and goes on as the agent. Otherwise
:func:`apply` forks: the child is the namespace's first process (pid 1) and goes on to become
the agent; the parent stays outside, forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to
it, waits, and exits the way it did, so whoever started the agent sees one process as before.
The cost, measured by ``benchmarks/sandbox.py``: one more fork (well under a millisecond from a
small process) and one more resident process per agent, which shares almost all its pages with
the agent's parent (it allocates nothing but a few frames); in the exec path it is the trampoline's
interpreter that stays. Inside, the agent is pid 1: the kernel drops signals it has no handler
for, except SIGKILL from outside. So the waiter, when it forwards a signal the agent neither
catches nor ignores, ends the agent itself (SIGKILL) and then ends by the signal it was sent:
a bare command stops at SIGTERM as it would outside a namespace.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from corral.runtime.sandbox import _libc, identity, landlock, namespaces, seccomp
from corral.runtime.sandbox.errors import SandboxError, SandboxUnavailable
from corral.runtime.sandbox.policy import (
    IdentityMode,
    SandboxMode,
    SandboxPolicy,
    outermost_names,
)

__all__ = ["Applied", "apply"]

_PR_SET_PDEATHSIG = 1
_FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


@dataclass(slots=True)
class Applied:
    """What :func:`apply` did, for the launcher's report: the layers now in force, and (best
    effort only) those it could not apply, each with the reason."""

    layers: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    landlock_abi: int = 0


def apply(policy: SandboxPolicy, *, parent: int | None = None, first: int = -1) -> Applied:
    """Confine this process according to ``policy``, for good.

    Call it in a freshly forked, single-threaded child, after its descriptors, working
    directory and limits are set and before any of the agent's code runs. With a PID
    namespace it returns in a new child (pid 1 of the namespace); the calling process never
    returns from it, and exits with that child's status.

    Args:
        policy: what to apply.
        parent: the process this one must not outlive; the death signal is armed again after
            the identity drop (the kernel clears it then). ``None``: leave it as it is.
        first: this process is already the first of a PID namespace its parent made for it
            (:func:`~corral.runtime.sandbox.namespaces.fork_as_first`), and this is the read
            end of a pipe whose write end only that parent holds (its end of file says the
            parent is gone). No waiter is forked then; this process goes on as the agent.

    Returns:
        The layers in force, and in best-effort mode those skipped.

    Raises:
        SandboxError: a step failed, naming it (``namespaces``, ``pid-namespace``, ``mounts``,
            ``identity``, ``no-new-privs``, ``landlock``, ``seccomp``); the process is
            half-confined and must exit without running the agent.
        SandboxUnavailable: strict mode, and Landlock lacks a right the policy needs.
    """
    applied = Applied()
    if policy.mode is SandboxMode.OFF:
        applied.skipped["all"] = "sandbox mode is off"
        return applied
    strict = policy.mode is SandboxMode.STRICT
    uid, gid = os.getuid(), os.getgid()

    flags = 0
    if policy.identity is IdentityMode.USER_NAMESPACE:
        flags |= namespaces.CLONE_NEWUSER
    if policy.mount_namespace:
        flags |= namespaces.CLONE_NEWNS
    if policy.ipc_namespace:
        flags |= namespaces.CLONE_NEWIPC
    if policy.pid_namespace and first < 0:
        flags |= namespaces.CLONE_NEWPID
    made = False
    if flags:
        with _step("namespaces", applied, strict):
            namespaces.unshare(flags)
            if flags & namespaces.CLONE_NEWUSER:
                namespaces.map_own_ids(uid, gid)
            made = True
            applied.layers.append("namespaces")

    alive = first
    if made and policy.pid_namespace and first < 0:
        with _step("pid-namespace", applied, strict):
            alive = _fork_into_pid_namespace(parent)

    if made and policy.mount_namespace:
        with _step("mounts", applied, strict):
            cwd = os.getcwd()
            namespaces.make_mounts_private()
            keep = [p for p in (policy.workspace, policy.tmp) if p]
            keep = namespaces.outermost(
                [*keep, *policy.read_only, *policy.read_write, *policy.devices]
            )
            # a directory inside another hidden one is already covered: once the outer one
            # is an empty tmpfs with only ``keep`` bound back, covering the inner one again
            # would build the same view with one more tmpfs and every bind again
            for hidden in outermost_names(policy.hide):
                namespaces.hide(hidden, keep=keep, resolved=True)
            if policy.identity is IdentityMode.SWITCH:
                assert policy.uid is not None and policy.gid is not None
                namespaces.open_up(keep, uid=policy.uid, gid=policy.gid)
            if alive >= 0:
                namespaces.mount_proc()
            # the working directory by its name again: the old one is under a covering
            # tmpfs, and ".." from it would lead into what that tmpfs hides
            with contextlib.suppress(OSError):
                os.chdir(cwd)
            applied.layers.append("mounts")

    with _step("identity", applied, strict):
        if policy.identity is IdentityMode.SWITCH:
            assert policy.uid is not None and policy.gid is not None
            if (os.getuid(), os.getgid()) != (policy.uid, policy.gid):
                identity.switch_ids(policy.uid, policy.gid)
            # else: already its org's ids, forked by a fork server that runs as them
            # (corral.runtime.local.forkbox); what it holds is dropped below
        if policy.identity is not IdentityMode.INHERIT or os.geteuid() != 0:
            identity.drop_capabilities()
            applied.layers.append("identity")
        _arm_death_signal(parent, alive)

    with _step("no-new-privs", applied, strict):
        identity.no_new_privs()
        if not policy.dumpable:
            identity.not_dumpable()
        applied.layers.append("no-new-privs")

    if policy.landlock:
        with _step("landlock", applied, strict):
            applied.landlock_abi = _restrict_files(policy, strict, own_proc=alive >= 0)
            applied.layers.append("landlock")

    if policy.seccomp:
        with _step("seccomp", applied, strict):
            seccomp.install()
            applied.layers.append("seccomp")
    return applied


@contextlib.contextmanager
def _step(name: str, applied: Applied, strict: bool) -> Iterator[None]:
    try:
        yield
    except SandboxError:
        raise
    except (OSError, ValueError) as exc:
        if strict:
            raise SandboxError(name, str(exc)) from exc
        applied.skipped[name] = str(exc)


def _restrict_files(policy: SandboxPolicy, strict: bool, *, own_proc: bool) -> int:
    abi = landlock.abi_version()
    if abi < 1:
        raise SandboxUnavailable("Landlock", "the kernel has no Landlock (or it is disabled)")
    if strict and abi < 4:
        raise SandboxUnavailable("Landlock TCP rules", f"ABI {abi}, they need 4")
    if strict and abi < 6:
        raise SandboxUnavailable("Landlock signal and socket scoping", f"ABI {abi}, it needs 6")
    # its own /proc shows only its namespace; without one, only its own entry
    proc = "/proc" if own_proc else f"/proc/{os.getpid()}"
    landlock.restrict(
        read=(*policy.read_only, proc),
        read_write=[p for p in (policy.workspace, policy.tmp, *policy.read_write) if p],
        devices=policy.devices,
        tcp_connect=policy.tcp_connect,
        abi=abi,
    )
    return abi


def _fork_into_pid_namespace(parent: int | None) -> int:
    """Fork the namespace's first process and return in it (with the read end of a pipe that
    only the parent holds open); the parent waits, mirrors its end, and never returns."""
    if parent is not None:  # the waiter stays outside: it must not outlive the launcher either
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, what="prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent:
            raise ProcessLookupError(f"parent {parent} is gone")
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
    # the waiter's view of the child's /proc entry: the child mounts its own /proc over this
    # one in the mount namespace they share, where the waiter's pids no longer mean anything
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(proc)
        raise
    if pid == 0:
        os.close(alive_w)
        os.close(proc)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, what="prctl(PR_SET_PDEATHSIG)")
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return alive_r
    os.close(alive_r)
    _wait_and_mirror(pid, mask, keep=(alive_w, proc))


def _handles(proc: int, child: int, signum: int) -> bool:
    """Whether ``child`` catches or ignores ``signum`` (its ``/proc`` status says): the kernel
    gives a namespace's pid 1 only the signals it has a handler for."""
    try:
        fd = os.open(f"{child}/status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
        try:
            text = os.read(fd, 1 << 14).decode("ascii", "replace")
        finally:
            os.close(fd)
    except OSError:
        return True  # cannot tell: pass the signal on, as a plain forward
    masks = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    bit = 1 << (signum - 1)
    caught = int(masks.get("SigCgt", "0").strip(), 16) | int(masks.get("SigIgn", "0").strip(), 16)
    return bool(caught & bit)


def _wait_and_mirror(
    child: int, mask: set[int | signal.Signals], *, keep: tuple[int, int]
) -> NoReturn:
    """Forward the signals a supervisor sends, wait for the child, end as it ended.

    A forwarded signal the child neither catches nor ignores would be dropped by the kernel
    (the child is its namespace's pid 1), where outside a namespace its default action
    would end the process: the waiter does that instead, with SIGKILL, and then ends by the
    signal that was sent, so a bare command stops at SIGTERM as it would unconfined.
    """
    code = 1
    emulated: list[int] = []
    proc = keep[1]
    try:

        def forward(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                if _handles(proc, child, signum):
                    os.kill(child, signum)
                else:
                    emulated.append(signum)
                    os.kill(child, signal.SIGKILL)

        for sig in _FORWARDED:
            signal.signal(sig, forward)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        low, high = sorted(keep)
        os.closerange(3, low)  # nothing of the launcher's: a report pipe must see its EOF
        os.closerange(low + 1, high)
        os.closerange(high + 1, 1 << 20)
        _, status = os.waitpid(child, 0)  # a handled signal interrupts it; it is retried
        code = os.waitstatus_to_exitcode(status)
        if code == -signal.SIGKILL and emulated:
            code = -emulated[0]
        if code < 0:  # killed: end the same way (without a core of this process)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those have no handler to reset
                signal.signal(-code, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [-code])
            os.kill(os.getpid(), -code)
            code = 128 - code
    finally:
        os._exit(code)


def _arm_death_signal(parent: int | None, alive: int) -> None:
    """Re-arm the death signal the identity drop cleared, then check the parent is still
    there: by its pid, or (from inside a PID namespace, where it has none) by the pipe it
    holds open."""
    if alive >= 0:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, what="prctl(PR_SET_PDEATHSIG)")
        poller = select.poll()
        poller.register(alive, select.POLLIN)
        gone = poller.poll(0)
        os.close(alive)
        if gone:
            raise ProcessLookupError("the namespace's parent is gone")
    elif parent is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, what="prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent:
            raise ProcessLookupError(f"parent {parent} is gone")
