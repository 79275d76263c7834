"""What the sandbox costs an agent's start: fork -> policy applied, per layer and in full, with
and without the PID namespace's extra fork; and the exec path's trampoline next to a bare
interpreter start.

Run with ``.venv/bin/python benchmarks/sandbox.py [--runs N]``. Figures are medians (p50) and
p90 in microseconds, measured from just before ``fork()`` in the parent to the moment the
child (the namespace's pid 1, when there is one) has finished ``apply()``. As root, the full
policy is also measured the way the fork server applies it: the PID namespace made by the parent
as it forks (its child is the namespace's pid 1 at once, with no waiter in between).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from corral.runtime.sandbox import IdentityMode, SandboxPolicy, apply, namespaces

ORG_UID = 64124


def measure(policy: SandboxPolicy | None, runs: int, *, made: bool = False) -> list[float]:
    """``made``: the PID namespace is made by the parent as it forks, as a fork server running
    as root does (:func:`namespaces.fork_as_first`), so ``apply`` forks no waiter."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY) if made else -1
    samples = []
    for _ in range(runs):
        read, write = os.pipe()
        alive_r, alive_w = os.pipe() if made else (-1, -1)
        start = time.perf_counter_ns()
        pid = namespaces.fork_as_first(own) if made else os.fork()
        if pid == 0:
            os.close(read)
            try:
                if made:
                    os.close(alive_w)
                if policy is not None:
                    apply(policy, first=alive_r)
                os.write(write, str(time.perf_counter_ns()).encode())
            finally:
                os._exit(0)
        os.close(write)
        if made:
            os.close(alive_r)
        done = int(os.read(read, 64) or b"0")
        os.close(read)
        os.waitpid(pid, 0)
        if made:
            os.close(alive_w)
        samples.append((done - start) / 1000)
    if made:
        os.close(own)
    return samples


def exec_path(python: str, policy: SandboxPolicy | None, runs: int) -> list[float]:
    samples = []
    env = {"PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "src")}
    for _ in range(runs):
        argv = [python, "-c", "pass"]
        fds: tuple[int, ...] = ()
        if policy is not None:
            read, write = os.pipe()
            os.write(write, policy.encode())
            os.close(write)
            argv = [python, "-m", "corral.runtime.sandbox.enter", str(read), "--", *argv]
            fds = (read,)
        start = time.perf_counter()
        subprocess.run(argv, check=True, pass_fds=fds, env=env)
        samples.append((time.perf_counter() - start) * 1e6)
        for fd in fds:
            os.close(fd)
    return samples


def show(name: str, samples: list[float]) -> None:
    q = statistics.quantiles(samples, n=10)
    print(f"{name:<46} p50 {statistics.median(samples):>9.0f} us   p90 {q[-1]:>9.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    runs = parser.parse_args().runs
    root = os.geteuid() == 0
    workspace = tempfile.mkdtemp(prefix="corral-bench-sandbox-")
    if root:
        os.chown(workspace, ORG_UID, ORG_UID)
    identity = IdentityMode.SWITCH if root else IdentityMode.USER_NAMESPACE
    ids = {"uid": ORG_UID, "gid": ORG_UID} if root else {}
    full = SandboxPolicy.for_agent(
        workspace, tcp_connect=(4222,), hide=(tempfile.gettempdir(),), identity=identity, **ids
    )
    off = {"pid_namespace": False, "mount_namespace": False, "ipc_namespace": False}
    print(f"sandbox apply cost, {runs} runs each, as {'root' if root else 'an ordinary user'}")
    show("fork only (baseline)", measure(None, runs))
    layers = {"landlock": False, "seccomp": False, "hide": ()}
    show("identity + no_new_privs", measure(full.with_changes(**off, **layers), runs))
    show("+ landlock", measure(full.with_changes(**off, seccomp=False, hide=()), runs))
    show("+ seccomp", measure(full.with_changes(**off, hide=()), runs))
    show(
        "+ mount, IPC namespaces, tmpfs over a dir",
        measure(full.with_changes(pid_namespace=False), runs),
    )
    show("full: + PID namespace (second fork, /proc)", measure(full, runs))
    if root:
        show("full, PID namespace made at fork (no waiter)", measure(full, runs, made=True))
    python = "/usr/bin/python3" if root and os.path.exists("/usr/bin/python3") else sys.executable
    few = max(10, runs // 10)
    print(f"\nexec path, {few} runs each ({python})")
    show("python -c pass", exec_path(python, None, few))
    show("enter trampoline + python -c pass", exec_path(python, full, few))


if __name__ == "__main__":
    main()
