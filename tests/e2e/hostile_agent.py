"""A hostile tenant's agent, run by the platform as an org's ``--command``: it attempts every
crossing the sandbox must refuse against another org's agents and the platform's files,
processes and ports, writes its outcomes to ``hostile.json`` in its own workspace, and then
serves as the built-in agent (so the test can check it still reads a granted secret and
completes tasks over the bus).

Run as ``python -m tests.e2e.hostile_agent CONFIG_JSON``. The outcome of each attempt is
``{"ok": bool, "detail": str}``; ``ok`` means it succeeded, a crossing for an attempt, a
requirement for a control (``works_*``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from tests.probes.hostile_recording import recorder
from tests.runtime.sandbox.hostile import CLONE_NEWUSER, in_child, sys_call

PTRACE_SEIZE = 0x4206


def attempts(config: dict[str, Any]) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}

    attempt = recorder(results)

    def read(path: str) -> int:
        with open(path, "rb") as f:
            return len(f.read(4096)) or True  # an empty file read is a crossing too

    def write(path: str) -> bool:
        with open(path, "w", encoding="utf-8") as f:
            f.write("mine now")
        return True

    def connect(port: int) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True

    def vm_read(pid: int) -> bool:
        buf = ctypes.create_string_buffer(8)
        local = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 8)
        remote = (ctypes.c_void_p * 2)(None, 8)
        try:
            sys_call("process_vm_readv", pid, local, 1, remote, 1, 0)
        except OSError as exc:
            if exc.errno == errno.EFAULT:  # the access check passed
                return True
            raise
        return True

    def getfd(pid: int) -> bool:
        try:
            pidfd = sys_call("pidfd_open", pid, 0)
        except OSError:
            pidfd = 0
        os.close(sys_call("pidfd_getfd", pidfd, 3, 0))
        return True

    def seen(pids: list[int]) -> object:
        visible = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        return sorted(visible & set(pids)) or False

    for name, path in config["read"].items():
        attempt(f"read_{name}", lambda path=path: read(path))
    for name, path in config["write"].items():
        attempt(f"write_{name}", lambda path=path: write(path))
    for name, path in config["list"].items():
        attempt(f"list_{name}", lambda path=path: os.listdir(path) or False)
    victims: dict[str, int] = config["pids"]
    attempt("see_victim_pids", lambda: seen(list(victims.values())))
    gentle = bool(config.get("gentle"))  # unconfined: no try that would really harm
    for name, pid in victims.items():
        attempt(f"signal_{name}", lambda pid=pid: os.kill(pid, signal.SIGCONT))
        attempt(f"kill_{name}", lambda pid=pid: os.kill(pid, 0))
        attempt(f"environ_{name}", lambda pid=pid: read(f"/proc/{pid}/environ"))
        attempt(f"maps_{name}", lambda pid=pid: read(f"/proc/{pid}/maps"))
        attempt(f"pidfd_open_{name}", lambda pid=pid: os.close(sys_call("pidfd_open", pid, 0)))
        if gentle:
            continue
        attempt(f"ptrace_{name}", lambda pid=pid: sys_call("ptrace", PTRACE_SEIZE, pid, 0, 0))
        attempt(f"mem_{name}", lambda pid=pid: read(f"/proc/{pid}/mem"))
        attempt(f"vm_readv_{name}", lambda pid=pid: vm_read(pid))
        attempt(f"pidfd_getfd_{name}", lambda pid=pid: getfd(pid))
    for name, port in config["ports"].items():
        attempt(f"connect_{name}", lambda port=port: connect(port))
    attempt("bind_tcp", lambda: socket.create_server(("127.0.0.1", 0)).close())
    if not gentle:
        target = os.path.join(os.environ["CORRAL_WORKSPACE"], "mnt")
        os.makedirs(target, exist_ok=True)
        mount = (b"none", target.encode(), b"tmpfs", 0, None)
        attempt("mount", lambda: in_child(lambda: sys_call("mount", *mount)))
        attempt("user_namespace", lambda: in_child(lambda: sys_call("unshare", CLONE_NEWUSER)))
    attempt("runs_as_root", lambda: os.getuid() == 0 or os.geteuid() == 0)

    # controls: what an agent must still do
    workspace = os.environ["CORRAL_WORKSPACE"]
    attempt("works_own_workspace", lambda: write(os.path.join(workspace, "mine.txt")))
    creds = Path(os.environ["CORRAL_CREDS_FILE"])
    attempt("works_own_creds", lambda: b"NATS" in creds.read_bytes())
    attempt("works_bus_port", lambda: connect(int(config["bus_port"])))
    attempt("works_tmp", lambda: write(os.path.join(os.environ["TMPDIR"], "t.txt")))
    results["whoami"] = {"ok": True, "detail": f"{os.getuid()} {os.getgid()} {os.getpid()}"}
    return results


def main() -> None:
    config = json.loads(sys.argv[1])
    outcome = attempts(config)
    workspace = os.environ["CORRAL_WORKSPACE"]
    with open(os.path.join(workspace, "hostile.tmp"), "w", encoding="utf-8") as f:
        json.dump(outcome, f)
    os.replace(os.path.join(workspace, "hostile.tmp"), os.path.join(workspace, "hostile.json"))
    sys.argv = sys.argv[:1]
    from corral.agents.general import main as serve

    with contextlib.suppress(KeyboardInterrupt):
        serve()


if __name__ == "__main__":
    main()
