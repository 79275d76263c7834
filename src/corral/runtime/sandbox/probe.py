"""What this kernel and this user can confine, said in plain words, and the refusal strict mode
owes an agent it cannot confine.

Why a probe that tries: whether user or PID namespaces work depends on sysctls, on security
modules (some distributions let an unprivileged user create a user namespace that then holds no
capability) and on the container the platform itself runs in. So the probe applies a real
sandbox policy in a throw-away child process (as root, and, when root, also as an ordinary
user) and reports the step that failed, if any. It runs once, at start-up.

``python -m corral.runtime.sandbox`` prints the report.
"""

from __future__ import annotations

import enum
import os
import sys
from dataclasses import dataclass, field

from corral.runtime.sandbox import landlock, seccomp
from corral.runtime.sandbox.errors import SandboxUnavailable
from corral.runtime.sandbox.policy import IdentityMode, SandboxMode, SandboxPolicy

__all__ = ["NOBODY", "Layer", "Report", "SandboxLevel", "probe"]

NOBODY = 65534


class SandboxLevel(enum.StrEnum):
    FULL = "full"  # every layer
    PARTIAL = "partial"  # some layers: best effort, the report names the missing ones
    NONE = "none"  # nothing the sandbox relies on


@dataclass(frozen=True, slots=True)
class Layer:
    name: str
    available: bool
    gives: str
    missing: str = ""


@dataclass(frozen=True, slots=True)
class Report:
    """What the probe found. ``trials`` maps a trial ("root", "user") to ``""`` (a full
    policy applied) or the error it met."""

    root: bool
    landlock_abi: int
    seccomp_filter: bool
    trials: dict[str, str] = field(default_factory=dict)

    @property
    def namespaces(self) -> bool:
        """The launcher's own path works: uid switch as root, a user namespace otherwise."""
        return self.trials.get("root" if self.root else "user") == ""

    def layers(self) -> list[Layer]:
        abi = self.landlock_abi
        mine = "root" if self.root else "user"
        return [
            Layer(
                "identity",
                self.namespaces,
                "each organization's own uid (as root) or a user namespace (an ordinary user); "
                "no capabilities, no_new_privs",
                self.trials.get(mine, "not tried"),
            ),
            Layer(
                "processes",
                self.namespaces,
                "a PID namespace with its own /proc: other processes cannot be seen, signalled "
                "or traced; an IPC namespace",
                self.trials.get(mine, "not tried"),
            ),
            Layer(
                "mounts",
                self.namespaces,
                "a mount namespace: the data directory is an empty tmpfs but for the agent's "
                "own workspace",
                self.trials.get(mine, "not tried"),
            ),
            Layer(
                "files",
                abi >= 1,
                "Landlock: write only the workspace and tmp, read only the interpreter, its "
                "libraries and a few files of /etc; no ptrace outside the agent",
                "" if abi >= 1 else "Landlock is absent or disabled",
            ),
            Layer(
                "network",
                abi >= 4,
                "Landlock: TCP connect only to the allowed ports, no TCP bind",
                "" if abi >= 4 else f"Landlock ABI {abi} < 4",
            ),
            Layer(
                "scoping",
                abi >= 6,
                "Landlock: no signal to, and no abstract unix socket of, anything outside",
                "" if abi >= 6 else f"Landlock ABI {abi} < 6",
            ),
            Layer(
                "syscalls",
                self.seccomp_filter,
                "seccomp: no ptrace, process_vm_*, pidfd_*, mount, bpf, keyctl, "
                "perf_event_open, userfaultfd, kexec, modules, new namespaces",
                "" if self.seccomp_filter else "no seccomp filter mode",
            ),
        ]

    @property
    def level(self) -> SandboxLevel:
        available = [layer.available for layer in self.layers()]
        if all(available):
            return SandboxLevel.FULL
        return SandboxLevel.PARTIAL if any(available) else SandboxLevel.NONE

    @property
    def default_mode(self) -> SandboxMode:
        """Strict where every layer works, best effort otherwise."""
        return SandboxMode.STRICT if self.level is SandboxLevel.FULL else SandboxMode.BEST_EFFORT

    def missing_for(self, policy: SandboxPolicy) -> list[Layer]:
        """The layers ``policy`` asks for that this host cannot give."""
        wanted = {"identity": policy.identity is not IdentityMode.INHERIT}
        wanted["processes"] = policy.pid_namespace
        wanted["mounts"] = policy.mount_namespace
        wanted["files"] = wanted["network"] = wanted["scoping"] = policy.landlock
        wanted["syscalls"] = policy.seccomp
        if policy.mode is SandboxMode.OFF:
            return []
        return [la for la in self.layers() if wanted[la.name] and not la.available]

    def check(self, policy: SandboxPolicy) -> None:
        """Raise, in strict mode, if ``policy`` needs a layer this host lacks.

        Raises:
            SandboxUnavailable: naming the first missing layer and why.
        """
        missing = self.missing_for(policy)
        if missing and policy.mode is SandboxMode.STRICT:
            raise SandboxUnavailable(missing[0].name, missing[0].missing)

    def to_wire(self) -> dict[str, object]:
        return {
            "level": str(self.level),
            "root": self.root,
            "landlock_abi": self.landlock_abi,
            "seccomp_filter": self.seccomp_filter,
            "trials": dict(self.trials),
            "layers": [
                {"name": la.name, "available": la.available, "missing": la.missing}
                for la in self.layers()
            ],
        }

    def describe(self) -> str:
        lines = [f"sandbox level: {self.level} (running as {'root' if self.root else 'a user'})"]
        for layer in self.layers():
            mark = "yes" if layer.available else "NO "
            why = f" [missing: {layer.missing}]" if not layer.available else ""
            lines.append(f"  {mark} {layer.name:<9} {layer.gives}{why}")
        return "\n".join(lines)


def probe(*, trials: bool = True) -> Report:
    """Find what this host offers. ``trials``: also apply a real policy in throw-away children
    (a few tens of milliseconds); without, namespaces are reported as not tried."""
    root = os.geteuid() == 0
    results: dict[str, str] = {}
    if trials:
        results["root" if root else "user"] = _trial("root" if root else "user")
        if root:  # would an ordinary user get a user namespace here?
            results["user"] = _trial("user")
    return Report(
        root=root,
        landlock_abi=landlock.abi_version(),
        seccomp_filter=_seccomp_filter_available(),
        trials=results,
    )


def _seccomp_filter_available() -> bool:
    try:
        seccomp.numbers(os.uname().machine)
    except ValueError:
        return False
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return any(line.startswith("Seccomp_filters:") for line in status)
    except OSError:
        return False


def _trial(who: str) -> str:
    import shutil  # here, not at the top: the exec path's trampoline imports this package
    import subprocess
    import tempfile

    workspace = tempfile.mkdtemp(prefix="corral-sandbox-probe-")
    try:
        if who == "user" and os.geteuid() == 0:
            os.chown(workspace, NOBODY, NOBODY)
        done = subprocess.run(
            [sys.executable, "-m", "corral.runtime.sandbox", "--trial", who, workspace],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode == 0:
            return ""
        return done.stdout.strip() or done.stderr.strip()[-300:] or f"exit {done.returncode}"
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
