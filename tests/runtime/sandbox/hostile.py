"""A hostile agent: tries every crossing the sandbox must refuse, and the things an agent must
still be able to do, then prints one JSON object ``{name: {"ok": bool, "detail": str}}``.

Standard library only; run as ``python hostile.py CONFIG_JSON`` with ``tests/probes`` on its
``PYTHONPATH`` (its outcomes are recorded by :mod:`hostile_recording`, shared with the fresh
suite's agent). ``ok`` means the action succeeded: for an attempt, that is a crossing; for a
control (``works_*``), that is required.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the same module, named as the tests package names it
    from tests.probes.hostile_recording import recorder
else:
    try:
        from hostile_recording import recorder
    except ModuleNotFoundError:  # imported from the tests package (the e2e suite's forked agent)
        from tests.probes.hostile_recording import recorder

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {
    "x86_64": {"ptrace": 101, "process_vm_readv": 310, "bpf": 321, "keyctl": 250,
               "add_key": 248, "perf_event_open": 298, "userfaultfd": 323, "clone": 56,
               "unshare": 272, "mount": 165, "umount2": 166, "chroot": 161},
    "aarch64": {"ptrace": 117, "process_vm_readv": 270, "bpf": 280, "keyctl": 219,
                "add_key": 217, "perf_event_open": 241, "userfaultfd": 282, "clone": 220,
                "unshare": 97, "mount": 40, "umount2": 39, "chroot": 51},
}[os.uname().machine] | {"pidfd_open": 434, "pidfd_getfd": 438, "io_uring_setup": 425}  # fmt: skip
CLONE_NEWUSER = 0x10000000


def sys_call(name: str, *args: object) -> int:
    result = libc.syscall(ctypes.c_long(NR[name]), *args)
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(result)


def in_child(action: Callable[[], object]) -> None:
    """Try ``action`` in a forked child (it may change the process for good)."""
    pid = os.fork()
    if pid == 0:
        try:
            action()
            os._exit(0)
        except OSError as exc:
            os._exit(exc.errno or 1)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise OSError(code, os.strerror(code))


def main(config: dict[str, object]) -> dict[str, dict[str, object]]:
    data, ws, tmp = str(config["data"]), str(config["workspace"]), str(config["tmp"])
    other, outside = str(config["other_workspace"]), str(config["outside"])
    victims = {"platform": int(config["platform_pid"]), "peer": int(config["peer_pid"])}  # type: ignore[call-overload]
    allowed, denied = int(config["allowed_port"]), int(config["denied_port"])  # type: ignore[call-overload]
    results: dict[str, dict[str, object]] = {}

    attempt = recorder(results)

    def read(path: str) -> str:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def write(path: str) -> bool:
        with open(path, "w", encoding="utf-8") as f:
            f.write("mine now")
        return True

    def connect(port: int) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            return True

    def bind() -> bool:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            return True

    def abstract() -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(b"\0" + str(config["abstract"]).encode())
            return True

    def sees_other_pids() -> bool:
        pids = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        return bool(pids & {*victims.values(), int(config["launcher_pid"])})  # type: ignore[call-overload]

    def process_vm_readv(pid: int) -> bool:
        buf = ctypes.create_string_buffer(8)
        local = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 8)
        remote = (ctypes.c_void_p * 2)(None, 8)
        try:
            sys_call("process_vm_readv", pid, local, 1, remote, 1, 0)
        except OSError as exc:
            if exc.errno == errno.EFAULT:  # the access check passed; the address was bad
                return True
            raise
        return True

    def pidfd_getfd(pid: int) -> bool:
        try:
            pidfd = sys_call("pidfd_open", pid, 0)
        except OSError:
            pidfd = 0  # the call itself must still be refused
        os.close(sys_call("pidfd_getfd", pidfd, 0, 0))
        return True

    def bpf() -> bool:
        attr = (ctypes.c_uint32 * 32)(2, 4, 4, 1)  # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
        os.close(sys_call("bpf", 0, attr, ctypes.sizeof(attr)))
        return True

    def perf() -> bool:
        attr = (ctypes.c_uint8 * 128)()
        ctypes.c_uint32.from_buffer(attr, 0).value = 1  # PERF_TYPE_SOFTWARE, CPU clock
        ctypes.c_uint32.from_buffer(attr, 4).value = 128
        ctypes.c_uint64.from_buffer(attr, 40).value = 1 << 5 | 1 << 6  # exclude kernel, hv
        os.close(sys_call("perf_event_open", attr, 0, -1, -1, 0))
        return True

    def mount() -> None:
        target = os.path.join(ws, "mnt")
        os.makedirs(target, exist_ok=True)
        sys_call("mount", b"none", target.encode(), b"tmpfs", 0, None)
        sys_call("umount2", target.encode(), 0)

    def clone_new_user() -> bool:
        pid = sys_call("clone", CLONE_NEWUSER | signal.SIGCHLD, 0, 0, 0, 0)
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return True

    attempt("read_data_dir_secret", lambda: read(os.path.join(data, "secret.key")))
    attempt("list_data_dir", lambda: {"secret.key", "agents"} & set(os.listdir(data)) or False)
    attempt("read_other_workspace", lambda: read(os.path.join(other, "note.txt")))
    attempt("write_other_workspace", lambda: write(os.path.join(other, "mine.txt")))
    attempt("write_outside", lambda: write(os.path.join(outside, f"x{os.getpid()}")))
    attempt("connect_denied_port", lambda: connect(denied))
    attempt("bind_tcp", bind)
    attempt("connect_abstract_socket", abstract)
    attempt("see_other_pids", lambda: sees_other_pids() or False)
    for who, pid in victims.items():
        attempt(f"signal_{who}", lambda pid=pid: os.kill(pid, signal.SIGCONT))
        attempt(f"ptrace_{who}", lambda pid=pid: sys_call("ptrace", 0x4206, pid, 0, 0))
        attempt(f"read_environ_{who}", lambda pid=pid: read(f"/proc/{pid}/environ"))
        attempt(f"read_cmdline_{who}", lambda pid=pid: read(f"/proc/{pid}/cmdline"))
        attempt(f"process_vm_readv_{who}", lambda pid=pid: process_vm_readv(pid))
        attempt(f"pidfd_open_{who}", lambda pid=pid: os.close(sys_call("pidfd_open", pid, 0)))
        attempt(f"pidfd_getfd_{who}", lambda pid=pid: pidfd_getfd(pid))
    attempt("mount", lambda: in_child(mount))
    attempt("unshare_user_namespace", lambda: in_child(lambda: sys_call("unshare", CLONE_NEWUSER)))
    attempt("clone_new_user_namespace", clone_new_user)
    attempt("chroot", lambda: in_child(lambda: sys_call("chroot", b"/")))
    attempt("bpf", bpf)
    attempt("keyctl", lambda: sys_call("keyctl", 0, -3, 1))  # KEYCTL_GET_KEYRING_ID, session
    attempt("add_key", lambda: sys_call("add_key", b"user", b"corral", b"x", 1, -2))
    attempt("perf_event_open", perf)
    attempt("userfaultfd", lambda: os.close(sys_call("userfaultfd", os.O_CLOEXEC)))

    # controls: what an agent must still do
    attempt(
        "works_workspace",
        lambda: (
            write(os.path.join(ws, "out.txt")) and read(os.path.join(ws, "out.txt")) == "mine now"
        ),
    )
    attempt("works_tmp", lambda: write(os.path.join(tmp, "t.txt")))
    attempt("works_imports", lambda: _imports())
    attempt("works_connect_allowed_port", lambda: connect(allowed))
    attempt("works_asyncio_subprocess", lambda: asyncio.run(_subprocesses()))
    attempt("works_threads", _thread)
    attempt("works_resolve_localhost", lambda: bool(socket.getaddrinfo("localhost", allowed)))
    results["status"] = {"ok": True, "detail": _status()}
    return results


def _imports() -> bool:
    import hashlib
    import sqlite3
    import ssl
    import uuid

    context = ssl.create_default_context()
    return bool(context.cert_store_stats()["x509_ca"]) and bool(
        hashlib.sha256(uuid.uuid4().bytes).hexdigest() and sqlite3.sqlite_version
    )


async def _subprocesses() -> bool:
    python = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "print(6 * 7)", stdout=asyncio.subprocess.PIPE
    )
    shell = await asyncio.create_subprocess_shell("echo hi", stdout=asyncio.subprocess.PIPE)
    out = [(await p.communicate())[0].strip() for p in (python, shell)]
    return out == [b"42", b"hi"] and python.returncode == 0


def _thread() -> bool:
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(1))
    t.start()
    t.join()
    return seen == [1]


def _status() -> str:
    with open("/proc/self/status", encoding="ascii") as f:
        wanted = ("Uid:", "Gid:", "Groups:", "Cap", "NoNewPrivs:", "Seccomp:")
        fields = [line.split(":", 1) for line in f if line.startswith(wanted)]
    info = {k: v.strip() for k, v in fields}
    info["pid"] = str(os.getpid())
    return json.dumps(info)


if __name__ == "__main__":
    outcome = main(json.loads(sys.argv[1]))
    sys.stdout.write(json.dumps(outcome) + "\n")
