"""How the local runtime confines its agents: the sandbox mode in force, what this host can
enforce, and each agent's :class:`~corral.runtime.sandbox.SandboxPolicy`.

Why one object: the mode is decided once, at start-up, from what the kernel offers
(:func:`~corral.runtime.sandbox.probe`) and what the operator asked for (``strict``,
``best-effort``, ``off``, or ``auto``: strict where every layer works); every agent's policy is
then built the same way, whichever path starts it. The sandbox's own errors stop here: a host
that cannot confine an agent in strict mode is the platform's :class:`Unavailable`, naming the
missing feature, raised before anything of the agent exists.

What an agent gets: its workspace and tmp read-write, its credentials file read-only, the
interpreter, its libraries and the ``PYTHONPATH`` it is given read-only; the data directory
(every other agent, the keys, the database, the bus's files) hidden under an empty tmpfs; TCP
connect only to the bus and the ports the operator opened; its own PID, mount and IPC
namespaces; Landlock and seccomp. As root it runs as its organization's own uid; as an ordinary
user, in a user namespace of its own.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from corral.domain.errors import InvalidInput, Unavailable
from corral.runtime.local.workspaces import AgentPaths
from corral.runtime.sandbox import (
    IdentityMode,
    Report,
    SandboxMode,
    SandboxPolicy,
    SandboxUnavailable,
    probe,
)
from corral.runtime.sandbox.policy import default_devices, default_read_only, outermost_names

__all__ = ["MODES", "Confinement", "OrgIds", "host_report"]

MODES = ("auto", "strict", "best-effort", "off")
DEFAULT_UID_BASE = 200_000
DEFAULT_UID_COUNT = 65_536


@functools.cache
def host_report() -> Report:
    """What this host can enforce, probed once per process (about half a second)."""
    return probe()


class OrgIds:
    """Each organization's own uid and gid (equal), from ``base`` up, for a runtime used on its
    own as root; the platform passes the ones it recorded in the store instead, so they stay
    the same across restarts."""

    def __init__(self, base: int = DEFAULT_UID_BASE, count: int = DEFAULT_UID_COUNT) -> None:
        self._base = base
        self._count = count
        self._ids: dict[str, int] = {}

    def __call__(self, org: str, agent_id: str) -> tuple[int, int] | None:
        uid = self._ids.get(org)
        if uid is None:
            if len(self._ids) >= self._count:
                return None
            uid = self._ids[org] = self._base + len(self._ids)
        return uid, uid


@dataclass(frozen=True, slots=True)
class Confinement:
    """The sandbox settings of one runtime.

    Attributes:
        mode: what is enforced (``off``: nothing).
        report: what this host offers (``None`` when off and never probed).
        tcp_ports: the ports agents may connect to (the bus's, and those an operator opened).
        hide: directories agents must not see (the data directory), besides the runtime's own.
        read_only: more paths agents may read.
    """

    mode: SandboxMode
    report: Report | None = None
    tcp_ports: tuple[int, ...] = ()
    hide: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()

    @classmethod
    def detect(
        cls,
        mode: str = "auto",
        *,
        tcp_ports: Sequence[int] = (),
        hide: Sequence[str] = (),
        read_only: Sequence[str] = (),
    ) -> Confinement:
        """Probe the host (once per process) and settle ``auto``.

        Raises:
            InvalidInput: ``mode`` is none of :data:`MODES`, or a port is out of range.
        """
        if mode not in MODES:
            raise InvalidInput(f"sandbox mode {mode!r} is none of {', '.join(MODES)}")
        if not all(0 < port < 65536 for port in tcp_ports):
            raise InvalidInput(f"a TCP port to allow is out of range: {list(tcp_ports)}")
        report = None if mode == "off" else host_report()
        chosen = SandboxMode.OFF if report is None else report.default_mode
        if mode != "auto":
            chosen = SandboxMode(mode)
        paths = tuple(os.path.realpath(p) for p in hide)
        return cls(chosen, report, tuple(dict.fromkeys(tcp_ports)), paths, tuple(read_only))

    def with_ports(self, *ports: int) -> Confinement:
        """The same, with more TCP ports agents may connect to (the bus's, once known)."""
        return dataclasses.replace(self, tcp_ports=tuple(dict.fromkeys((*self.tcp_ports, *ports))))

    @property
    def enabled(self) -> bool:
        return self.mode is not SandboxMode.OFF

    def level(self) -> str:
        """One word or phrase for an agent's status: ``strict``, ``off``, or ``best-effort``
        with the layers this host lacks."""
        if self.mode is not SandboxMode.BEST_EFFORT or self.report is None:
            return str(self.mode)
        missing = [layer.name for layer in self.report.layers() if not layer.available]
        return f"best-effort (missing: {', '.join(missing)})" if missing else "best-effort"

    def describe(self) -> str:
        """What ``corral up`` prints: the mode, and what each layer gives or lacks."""
        if not self.enabled or self.report is None:
            return (
                "SANDBOX OFF: agents run unconfined, as the control plane's own user, and can "
                "read the data directory, the keys and each other. For development only."
            )
        lines = [f"sandbox: {self.level()}", self.report.describe()]
        ports = ", ".join(str(p) for p in self.tcp_ports) or "none"
        lines.append(f"  agents may connect to TCP ports: {ports} (no other TCP, no listening)")
        missing = [layer.name for layer in self.report.layers() if not layer.available]
        if missing and self.mode is SandboxMode.STRICT:
            lines.append(
                f"STRICT: this host lacks {', '.join(missing)}: every agent start will be "
                "refused (run with --sandbox best-effort to accept less)"
            )
        return "\n".join(lines)

    def policy(
        self,
        paths: AgentPaths,
        ids: tuple[int, int] | None,
        env: Mapping[str, str],
    ) -> SandboxPolicy | None:
        """The policy for one agent (``None`` when off).

        Raises:
            Unavailable: strict mode and this host lacks a layer (naming it), or the agent has
                no uid of its own to run as (root).
        """
        if not self.enabled:
            return None
        root = os.geteuid() == 0
        if root and ids is None:  # never an agent as root, whatever the mode
            raise Unavailable(
                f"cannot confine agent {paths.agent_id}: its organization has no uid to run "
                "as (is the sandbox's uid range exhausted?)",
                details={"org": paths.org, "agent_id": paths.agent_id, "sandbox": "identity"},
            )
        identity = IdentityMode.SWITCH if root else IdentityMode.USER_NAMESPACE
        hide = _resolved((*self.hide, str(paths.root)))
        extra = [*self.read_only]
        extra += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if os.path.isabs(p)]
        readable = list(_readable(tuple(extra), hide))
        agent_dir = os.path.realpath(paths.agent_dir)  # the policy names resolved paths
        # its own credentials, bound back into the hidden data directory for it alone
        readable.append(os.path.join(agent_dir, paths.creds.name))
        try:
            policy = SandboxPolicy(
                workspace=os.path.join(agent_dir, paths.workspace.name),
                tmp=os.path.join(agent_dir, paths.tmp.name),
                # one Landlock rule (and, boxed, one bind) per outermost directory
                read_only=outermost_names((*_system_read_only(hide), *readable)),
                devices=_devices(),
                tcp_connect=self.tcp_ports,
                identity=identity,
                uid=ids[0] if ids else None,
                gid=ids[1] if ids else None,
                hide=hide,
                mode=self.mode,
            )
            if self.report is not None:
                self.report.check(policy)
        except SandboxUnavailable as exc:
            raise Unavailable(
                f"cannot confine agent {paths.agent_id} (sandbox strict): {exc.feature} is "
                f"missing on this host: {exc.reason}",
                details={"org": paths.org, "agent_id": paths.agent_id, "sandbox": exc.feature},
            ) from exc
        except ValueError as exc:
            raise Unavailable(
                f"cannot confine agent {paths.agent_id}: {exc}",
                details={"org": paths.org, "agent_id": paths.agent_id},
            ) from exc
        return policy


@functools.cache
def _resolved(paths: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(os.path.realpath(p) for p in paths))


@functools.lru_cache(maxsize=256)  # bounded: a role's environment may name its own paths
def _readable(extra: tuple[str, ...], hide: tuple[str, ...]) -> tuple[str, ...]:
    """Of ``extra``, resolved, what exists outside ``hide``: the same for every agent given the
    same, found once (as :func:`_system_read_only`)."""
    return tuple(p for p in _resolved(extra) if os.path.exists(p) and not _under(p, hide))


@functools.cache
def _system_read_only(hide: tuple[str, ...]) -> tuple[str, ...]:
    """What every agent reads (the interpreter, its libraries, a few files of /etc), found once
    per process: the same for every agent, and a few hundred system calls to find. Without a
    path that holds a hidden directory (a checkout holding the data directory), which Landlock
    would let the agent list."""
    return tuple(
        p for p in default_read_only() if not any(os.path.commonpath([p, h]) == p for h in hide)
    )


@functools.cache
def _devices() -> tuple[str, ...]:
    return default_devices()


def _under(path: str, dirs: Sequence[str]) -> bool:
    real = os.path.realpath(path)
    for d in dirs:
        d = os.path.realpath(d)
        if os.path.commonpath([real, d]) == d:
            return True
    return False
