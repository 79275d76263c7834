"""An attacker's agent for the independent hostile suite (``test_hostile_fresh.py``): a tenant's
own program, provisioned with ``--command`` through the public API, that tries every crossing it
can think of when a task asks it to, and answers with the outcome of each attempt as the task's
result.

It knows only what a tenant's program knows (its environment) plus the guesses its task gives it
(paths, pids and ports an attacker would scan for); it finds more by itself: the data directory
from its own workspace's path, every pid that answers a signal, every listening TCP port and
every abstract unix socket the host lists, every key-like string in what it can read.

Self-contained on purpose (the standard library, the SDK, and only the recorder of outcomes it
shares with the sandbox suite's agent, :mod:`hostile_recording` in ``tests/probes``: what it
tries is its own, see there why): it runs as a script (the exec path) and as
``python -m fresh_hostile_agent`` (its organization's fork server). Each outcome is
``{"ok": bool, "detail": str}``; ``ok`` is a crossing for an attempt and a requirement met for a
control (names starting ``works_``).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import re
import signal
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same module, named as the tests package names it
    from tests.probes.hostile_recording import Outcomes, recorder
else:
    from hostile_recording import Outcomes, recorder

from corral.sdk import Agent, TaskContext

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {
    "x86_64": {"ptrace": 101, "process_vm_readv": 310, "bpf": 321, "keyctl": 250,
               "perf_event_open": 298, "userfaultfd": 323, "unshare": 272, "mount": 165,
               "kexec_load": 246, "init_module": 175},
    "aarch64": {"ptrace": 117, "process_vm_readv": 270, "bpf": 280, "keyctl": 219,
                "perf_event_open": 241, "userfaultfd": 282, "unshare": 97, "mount": 40,
                "kexec_load": 104, "init_module": 105},
}[os.uname().machine] | {"pidfd_open": 434, "pidfd_getfd": 438}  # fmt: skip
PTRACE_ATTACH = 16
CLONE_NEWUSER = 0x10000000
KEY_SPEC_SESSION_KEYRING = -3
KEYCTL_GET_KEYRING_ID = 0
KEY_LIKE = re.compile(rb"(crl_[A-Za-z0-9_\-]{16,}|S[UOAC][A-Z2-7]{50,})")


def sys_call(name: str, *args: object) -> int:
    result = libc.syscall(ctypes.c_long(NR[name]), *args)
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(result)


def in_child(action: Callable[[], object]) -> bool:
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
        raise OSError(code, os.strerror(code) if code > 0 else f"signal {-code}")
    return True


class Attacker:
    def __init__(self, targets: dict[str, Any]) -> None:
        self.targets = targets
        #: no attempt that would harm what it reaches (a ptrace stops its target; a mount
        #: stays): for a run without the sandbox, where the attempts succeed
        self.gentle = bool(targets.get("gentle"))
        self.out: Outcomes = {}
        self.attempt = recorder(self.out, detail_chars=300)
        self.keys: set[str] = set()  # anything key-like met on the way

    def read(self, path: str) -> object:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
        self.keys.update(m.decode() for m in KEY_LIKE.findall(data))
        return len(data) or True  # an empty file read is a crossing too

    def everything(self) -> None:
        self.files()
        self.processes()
        self.kernel()
        self.network()

    # -- files ------------------------------------------------------------------------------

    def files(self) -> None:
        workspace = os.environ["CORRAL_WORKSPACE"]
        # <data>/agents/orgs/<org>/agents/<agent>/workspace: the data directory, by its own path
        root = workspace.rsplit("/orgs/", 1)[0]
        data = self.targets.get("data") or os.path.dirname(root)
        self.attempt("list_data_dir", lambda: os.listdir(data) or False)
        self.attempt("list_orgs", lambda: os.listdir(os.path.join(root, "orgs")) or False)
        names = ["admin.key", "master.key", "api.url", "corral.db", "nats/server/server.conf"]
        for name in names:
            self.attempt(f"read_{name}", lambda name=name: self.read(os.path.join(data, name)))
        self.attempt("list_nats_auth", lambda: os.listdir(os.path.join(data, "nats/auth")))
        for name, path in self.targets.get("read", {}).items():
            self.attempt(f"read_{name}", lambda path=path: self.read(path))
        for name, path in self.targets.get("list", {}).items():
            self.attempt(f"list_{name}", lambda path=path: os.listdir(path) or False)
        for name, path in self.targets.get("write", {}).items():
            self.attempt(f"write_{name}", lambda path=path: self.write(path))
        self.attempt("read_host_shadow", lambda: self.read("/etc/shadow"))

    def write(self, path: str) -> bool:
        with open(path, "w", encoding="utf-8") as f:
            f.write("mine now")
        return True

    # -- processes --------------------------------------------------------------------------

    def processes(self) -> None:
        me = os.getpid()
        mine = {me, os.getppid(), *self.children(), *map(int, os.listdir("/proc/self/task"))}
        self.attempt("see_other_pids", lambda: sorted(self.visible() - mine) or False)
        for name, pid in self.targets.get("pids", {}).items():
            self.attempt(f"signal_{name}", lambda pid=pid: os.kill(pid, signal.SIGCONT))
            self.attempt(f"exists_{name}", lambda pid=pid: os.kill(pid, 0))
            for what in ("environ", "cmdline", "maps", "mem", "status"):
                self.attempt(f"{what}_{name}", lambda p=pid, w=what: self.read(f"/proc/{p}/{w}"))
            if not self.gentle:
                self.attempt(f"ptrace_{name}", lambda pid=pid: self.ptrace(pid))
            self.attempt(f"vm_readv_{name}", lambda pid=pid: self.vm_read(pid))
            self.attempt(f"pidfd_open_{name}", lambda pid=pid: sys_call("pidfd_open", pid, 0))
            self.attempt(f"pidfd_getfd_{name}", lambda pid=pid: self.getfd(pid))
            self.attempt(f"fds_{name}", lambda pid=pid: os.listdir(f"/proc/{pid}/fd") or False)

    def children(self) -> set[int]:
        with open(f"/proc/self/task/{os.getpid()}/children", encoding="ascii") as f:
            return {int(p) for p in f.read().split()}

    def visible(self) -> set[int]:
        """Every pid this process can name: in /proc, and by a signal-0 scan of the range."""
        found = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        with open("/proc/sys/kernel/pid_max", encoding="ascii") as f:
            pid_max = int(f.read())
        for pid in range(1, pid_max + 1):
            try:
                os.kill(pid, 0)
                found.add(pid)
            except PermissionError:
                found.add(pid)  # it exists, out of reach
            except ProcessLookupError:
                pass
        return found

    def ptrace(self, pid: int) -> bool:
        sys_call("ptrace", PTRACE_ATTACH, pid, 0, 0)
        return True

    def vm_read(self, pid: int) -> bool:
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

    def getfd(self, pid: int) -> bool:
        pidfd = sys_call("pidfd_open", pid, 0)
        for fd in range(3, 16):
            try:
                os.close(sys_call("pidfd_getfd", pidfd, fd, 0))
                return True
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
        return False

    # -- the kernel -------------------------------------------------------------------------

    def kernel(self) -> None:
        target = os.path.join(os.environ["CORRAL_WORKSPACE"], "mnt")
        os.makedirs(target, exist_ok=True)
        mount = (b"none", target.encode(), b"tmpfs", 0, None)
        if not self.gentle:
            self.attempt("mount", lambda: in_child(lambda: sys_call("mount", *mount)))
            self.attempt("kexec_load", lambda: sys_call("kexec_load", 0, 0, None, 0))
        self.attempt("user_namespace", lambda: in_child(lambda: sys_call("unshare", CLONE_NEWUSER)))
        attr = ctypes.create_string_buffer(128)  # zeroes: BPF_MAP_CREATE of nothing
        self.attempt("bpf", lambda: sys_call("bpf", 0, attr, 128))
        self.attempt(
            "keyctl",
            lambda: sys_call("keyctl", KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0),
        )
        perf = ctypes.create_string_buffer(128)
        ctypes.memmove(perf, (1).to_bytes(4, "little") + (128).to_bytes(4, "little"), 8)
        self.attempt("perf_event_open", lambda: sys_call("perf_event_open", perf, 0, -1, -1, 0))
        self.attempt("userfaultfd", lambda: sys_call("userfaultfd", 0))
        self.attempt("init_module", lambda: sys_call("init_module", None, 0, b""))
        self.attempt("runs_as_root", lambda: os.getuid() == 0 or os.geteuid() == 0)
        self.attempt("capabilities", lambda: self.capabilities() or False)

    def capabilities(self) -> list[str]:
        with open("/proc/self/status", encoding="ascii") as f:
            lines = [line.split() for line in f if line.startswith("Cap")]
        return [f"{name}{value}" for name, value in lines if int(value, 16)]

    # -- the network ------------------------------------------------------------------------

    def network(self) -> None:
        ports = dict(self.targets.get("ports", {}))
        for port in self.listening():
            ports.setdefault(f"listening_{port}", port)
        allowed = self.allowed()
        for name, port in ports.items():
            if port not in allowed:
                self.attempt(f"connect_{name}", lambda port=port: self.connect(port))
        api = self.targets.get("ports", {}).get("api")
        for key in sorted(self.keys | {"guess"}):
            self.attempt(f"api_admin_with_{key[:12]}", lambda k=key: self.admin_call(api, k))
        self.attempt("bind_tcp", lambda: socket.create_server(("127.0.0.1", 0)).close())
        for name in {*self.abstract_sockets(), *self.targets.get("abstract", [])}:
            self.attempt(f"abstract_{name[:40]}", lambda name=name: self.unix("\0" + name))

    def allowed(self) -> set[int]:
        """The ports the platform gives this agent on purpose: the bus's and the gateway's."""
        found = set()
        for name in ("CORRAL_NATS_URL", "OPENAI_BASE_URL"):
            match = re.search(r":(\d+)", os.environ.get(name, "").rsplit("@", 1)[-1])
            if match:
                found.add(int(match.group(1)))
        return found

    def connect(self, port: int) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True

    def admin_call(self, port: int | None, key: str) -> object:
        if port is None:
            return False
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/orgs", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status

    def listening(self) -> set[int]:
        """TCP ports in LISTEN on the host's loopback or any address, from /proc/net."""
        ports: set[int] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table, encoding="ascii") as f:
                    rows = [line.split() for line in f.readlines()[1:]]
            except OSError:
                continue
            ports |= {int(r[1].rsplit(":", 1)[1], 16) for r in rows if r[3] == "0A"}
        return ports

    def abstract_sockets(self) -> list[str]:
        try:
            with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            return []
        return sorted({r[7][1:] for r in rows if len(r) > 7 and r[7].startswith("@")})[:20]

    def unix(self, address: str) -> bool:
        for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_UNIX, kind) as s:
                try:
                    s.connect(address)
                    return True
                except OSError as exc:
                    if exc.errno != errno.EPROTOTYPE:
                        raise
        return False


agent = Agent.from_env()


@agent.task
async def handle(ctx: TaskContext) -> dict[str, Any]:
    attacker = Attacker(dict(ctx.payload))
    # in a thread: the scans take a while, and the agent's heartbeats must go on meanwhile
    await asyncio.to_thread(attacker.everything)
    out = attacker.out
    # controls: what the agent must still be able to do
    workspace = os.environ["CORRAL_WORKSPACE"]
    out["works_own_workspace"] = _control(lambda: attacker.write(f"{workspace}/mine.txt"))
    out["works_tmp"] = _control(lambda: attacker.write(f"{os.environ['TMPDIR']}/t.txt"))
    creds = os.environ["CORRAL_CREDS_FILE"]
    out["works_own_creds"] = _control(lambda: b"NATS" in Path(creds).read_bytes())
    out["works_bus_port"] = _control(lambda: attacker.connect(int(ctx.payload["bus_port"])))
    granted = ctx.payload.get("granted")
    if granted:
        value = await ctx.secret(str(granted))
        out["works_granted_secret"] = {"ok": value == b"ours to read", "detail": ""}
    return {"outcomes": out, "whoami": [os.getuid(), os.getpid()], "keys": len(attacker.keys)}


def _control(action: Callable[[], object]) -> dict[str, object]:
    try:
        return {"ok": bool(action()), "detail": ""}
    except Exception as exc:
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}


if __name__ == "__main__":
    agent.run()
