"""The sandbox policy: everything a child needs to confine itself, decided by the control plane.

Why a plain frozen value: the control plane decides (which uid, which ports, what to hide) and
the child, forked by the fork server or started through the ``enter`` trampoline, only applies
it, with no lookup of its own. It crosses the process boundary as JSON (``to_wire``/
``from_wire``), in a descriptor rather than argv, so it never shows in ``ps``.
"""

from __future__ import annotations

import enum
import json
import os
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = [
    "IdentityMode",
    "SandboxMode",
    "SandboxPolicy",
    "default_devices",
    "default_read_only",
    "outermost_names",
]


class SandboxMode(enum.StrEnum):
    STRICT = "strict"  # every layer of the policy, or refuse to start the agent
    BEST_EFFORT = "best-effort"  # what this kernel offers; the report says what is missing
    OFF = "off"  # nothing at all: development only


class IdentityMode(enum.StrEnum):
    SWITCH = "switch"  # root: become the policy's uid/gid
    USER_NAMESPACE = "user-namespace"  # an ordinary user: keep the own ids in a user namespace
    INHERIT = "inherit"  # keep the caller's ids (only for best-effort or off)


# what the interpreter, its libraries, TLS and name resolution read under /etc
_ETC = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/nsswitch.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/mime.types",
    "/etc/passwd",  # world-readable, no secret; getpwuid() and tools that need a home
    "/etc/group",
)
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
_CPU = ("/sys/devices/system/cpu",)  # os.cpu_count() and friends


def default_read_only(*extra: str) -> tuple[str, ...]:
    """What a Python agent reads: the system's programs and libraries, this interpreter (its
    prefixes, the virtualenv, every ``sys.path`` directory that is not the working directory),
    the few files of ``/etc`` that TLS and name resolution need, and ``extra``."""
    paths = [*_SYSTEM, *_ETC, *_CPU]
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        paths.append(prefix)
    paths.append(os.path.dirname(os.path.realpath(sys.executable)))
    cwd = os.getcwd()
    paths += [p for p in sys.path if p and os.path.isabs(p) and p != cwd]
    paths += extra
    existing = (os.path.realpath(p) for p in paths if os.path.exists(p))
    return tuple(dict.fromkeys(existing))


def default_devices() -> tuple[str, ...]:
    devices = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
    return tuple(p for p in devices if os.path.exists(p))


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    """How one agent is confined.

    Attributes:
        workspace: the agent's own directory, read-write.
        tmp: its temporary directory, read-write (``None``: none).
        read_only: what it may read and execute (see :func:`default_read_only`).
        read_write: more read-write paths besides the workspace and tmp.
        devices: device files it may read and write (``/dev/null`` ...).
        tcp_connect: the TCP ports it may connect to (on any host); it may bind none.
        identity: how it gets its own ids (:class:`IdentityMode`).
        uid, gid: the ids to switch to (``SWITCH`` only).
        pid_namespace: run it as the first process of a new PID namespace with its own /proc.
        mount_namespace: give it a mount namespace, where ``hide`` is done.
        ipc_namespace: its own System V IPC and POSIX message queues.
        hide: directories covered by an empty tmpfs (``workspace``, ``tmp`` and any path of
            ``read_only``/``read_write`` under them are bound back).
        landlock, seccomp: apply those layers.
        dumpable: leave the process dumpable (``PR_SET_DUMPABLE`` stays 1).
        mode: strict, best-effort or off (:class:`SandboxMode`).
    """

    workspace: str
    tmp: str | None = None
    read_only: tuple[str, ...] = ()
    read_write: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    tcp_connect: tuple[int, ...] = ()
    identity: IdentityMode = IdentityMode.INHERIT
    uid: int | None = None
    gid: int | None = None
    pid_namespace: bool = True
    mount_namespace: bool = True
    ipc_namespace: bool = True
    hide: tuple[str, ...] = ()
    landlock: bool = True
    seccomp: bool = True
    dumpable: bool = False
    mode: SandboxMode = SandboxMode.STRICT

    def __post_init__(self) -> None:
        if self.identity is IdentityMode.SWITCH and (not self.uid or not self.gid):
            raise ValueError("identity 'switch' needs a uid and a gid other than 0")
        if self.mode is SandboxMode.STRICT and self.identity is IdentityMode.INHERIT:
            raise ValueError("strict mode needs identity 'switch' (root) or 'user-namespace'")
        if not all(0 < port < 65536 for port in self.tcp_connect):
            raise ValueError(f"bad TCP port in {self.tcp_connect}")
        if self.pid_namespace and not self.mount_namespace:
            raise ValueError("a PID namespace needs a mount namespace for its own /proc")
        for hidden in self.hide if not self.mount_namespace else ():  # else tmpfs and binds
            exposed = [p for p in (*self.read_only, *self.read_write) if _contains(p, hidden)]
            if exposed:
                raise ValueError(f"{exposed} would expose the hidden {hidden}")

    @classmethod
    def for_agent(
        cls,
        workspace: str,
        *,
        tmp: str | None = None,
        tcp_connect: tuple[int, ...] = (),
        hide: tuple[str, ...] = (),
        uid: int | None = None,
        gid: int | None = None,
        read_only: tuple[str, ...] = (),
        mode: SandboxMode = SandboxMode.STRICT,
        identity: IdentityMode | None = None,
    ) -> SandboxPolicy:
        """The default policy for an agent: root switches to ``uid``/``gid``, an ordinary user
        gets a user namespace (``identity`` overrides, for a policy built for another launcher);
        new PID, mount and IPC namespaces; Landlock and seccomp."""
        if identity is None:
            root = os.geteuid() == 0
            identity = IdentityMode.SWITCH if root else IdentityMode.USER_NAMESPACE
        if mode is SandboxMode.OFF:
            identity = IdentityMode.SWITCH if uid and gid else IdentityMode.INHERIT
        return cls(
            workspace=os.path.realpath(workspace),
            tmp=os.path.realpath(tmp) if tmp else None,
            read_only=_not_exposing(default_read_only(), hide) + read_only,
            devices=default_devices(),
            tcp_connect=tcp_connect,
            identity=identity,
            uid=uid if identity is IdentityMode.SWITCH else None,
            gid=gid if identity is IdentityMode.SWITCH else None,
            hide=tuple(os.path.realpath(h) for h in hide),
            mode=mode,
        )

    def with_changes(self, **changes: Any) -> SandboxPolicy:
        return replace(self, **changes)

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SandboxPolicy:
        def strings(key: str) -> tuple[str, ...]:
            return tuple(str(v) for v in data.get(key, ()))

        def optional_int(key: str) -> int | None:
            value = data.get(key)
            return None if value is None else int(value)

        return cls(
            workspace=str(data["workspace"]),
            tmp=None if data.get("tmp") is None else str(data["tmp"]),
            read_only=strings("read_only"),
            read_write=strings("read_write"),
            devices=strings("devices"),
            tcp_connect=tuple(int(p) for p in data.get("tcp_connect", ())),
            identity=IdentityMode(data.get("identity", IdentityMode.INHERIT)),
            uid=optional_int("uid"),
            gid=optional_int("gid"),
            pid_namespace=bool(data.get("pid_namespace", True)),
            mount_namespace=bool(data.get("mount_namespace", True)),
            ipc_namespace=bool(data.get("ipc_namespace", True)),
            hide=strings("hide"),
            landlock=bool(data.get("landlock", True)),
            seccomp=bool(data.get("seccomp", True)),
            dumpable=bool(data.get("dumpable", False)),
            mode=SandboxMode(data.get("mode", SandboxMode.STRICT)),
        )

    def encode(self) -> bytes:
        return json.dumps(self.to_wire(), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> SandboxPolicy:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a sandbox policy is a JSON object")
        return cls.from_wire(data)


def outermost_names(paths: tuple[str, ...]) -> tuple[str, ...]:
    """``paths`` (resolved) without those that lie inside another one of them, by name alone
    (no lookup). A Landlock rule, a bind or a tmpfs on a directory already covers what lies
    inside it, so the others cost a rule or a mount and give nothing."""
    kept: list[str] = []
    # sorted by components, what lies inside a directory comes right after it ("/usr/bin"
    # before "/usr-local", which a sort by characters would put between them)
    for path in sorted(set(paths), key=lambda p: p.rstrip("/").split("/")):
        if kept and path.startswith(kept[-1].rstrip("/") + "/"):
            continue
        kept.append(path)
    return tuple(kept)


def _not_exposing(paths: tuple[str, ...], hidden: tuple[str, ...]) -> tuple[str, ...]:
    """Drop the defaults that contain a hidden directory (a ``sys.path`` entry such as a
    checkout holding the data directory): Landlock would let the agent list it."""
    return tuple(p for p in paths if not any(_contains(p, h) for h in hidden))


def _contains(path: str, inner: str) -> bool:
    path, inner = os.path.realpath(path), os.path.realpath(inner)
    return os.path.commonpath([path, inner]) == path
