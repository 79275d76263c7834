"""A seccomp filter, in classic BPF built here, that refuses the system calls an agent never needs
and an attacker would: reaching into other processes, the kernel's administration, new
namespaces, and the interfaces with a history of privilege escalations.

Why our own: libseccomp and its wrappers are not in a fresh Python, and the fork server imports
only the standard library. A deny-list of fixed numbers is a short, linear program (two
instructions per call), which the kernel JIT-compiles; every other call is allowed, so agents
keep running whatever Python and its subprocesses need.

The program checks the architecture first: a call made through another ABI (32-bit ``int 0x80``
on x86_64) kills the process, and x32 calls (numbers with bit 30 set) are refused, since the
deny-list names only native numbers. ``clone`` is refused when its flags ask for a new
namespace, and ``clone3`` answers ENOSYS: its flags live in memory the filter cannot read, and
glibc falls back to ``clone`` on ENOSYS.

``pidfd_open`` is refused (EPERM). A pidfd would let an agent hold on to a process it can name
and feed it to ``pidfd_getfd``/``process_madvise``/``setns``; those are refused too, and other
layers (pid namespace, Landlock's ptrace and signal scoping) already stop it, but the filter
cannot tell "my child" from "anyone", and nothing an agent needs depends on it: asyncio probes
``pidfd_open`` and falls back to its thread-based child watcher when refused (one thread per
child being awaited, only on Python >= 3.12), ``subprocess`` does not use it.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import struct

from corral.runtime.sandbox import _libc

__all__ = ["DENIED", "build", "install"]

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_BIT = 0x40000000

# refused with EPERM; names missing from an architecture's table do not exist there
DENIED = (  # fmt: skip
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "pidfd_open",
    "process_madvise",
    "process_mrelease",
    "kcmp",
    "mount",
    "umount2",
    "mount_setattr",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "keyctl",
    "add_key",
    "request_key",
    "swapon",
    "swapoff",
    "reboot",
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
    "acct",
    "quotactl",
    "quotactl_fd",
    "syslog",
    "lookup_dcookie",
    "uselib",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)

_TABLES: dict[str, dict[str, int]] = {
    "x86_64": {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272,
        "setns": 308, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "keyctl": 250, "add_key": 248, "request_key": 249,
        "swapon": 167, "swapoff": 168, "reboot": 169, "open_by_handle_at": 304,
        "name_to_handle_at": 303, "iopl": 172, "ioperm": 173, "acct": 163, "quotactl": 179,
        "syslog": 103, "lookup_dcookie": 212, "uselib": 134, "clone": 56, "ioctl": 16,
    },
    "aarch64": {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97,
        "setns": 268, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "keyctl": 219, "add_key": 217, "request_key": 218,
        "swapon": 224, "swapoff": 225, "reboot": 142, "open_by_handle_at": 265,
        "name_to_handle_at": 264, "acct": 89, "quotactl": 60, "syslog": 116,
        "lookup_dcookie": 18, "clone": 220, "ioctl": 29,
    },
}  # fmt: skip
# the unified numbers (5.x on), the same on both
_UNIFIED = {
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438, "process_madvise": 440,
    "mount_setattr": 442, "quotactl_fd": 443, "process_mrelease": 448,
}  # fmt: skip

# every CLONE_NEW* flag clone(2) accepts (CLONE_NEWTIME is only for clone3/unshare, and its
# bit in clone(2)'s flags belongs to the exit signal)
CLONE_NEW_FLAGS = 0x7E020000
_TIOCSTI = 0x5412  # push characters into a terminal's input: a known escape from a shell

# BPF opcodes and seccomp return values
_LD_W_ABS = 0x20
_JEQ = 0x15
_JGE = 0x35
_JSET = 0x45
_RET = 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_KILL_PROCESS = 0x80000000
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_PR_SET_NO_NEW_PRIVS = 38
# offsets in struct seccomp_data: nr, arch, then args[6] as u64 (low word first on both)
_NR, _ARCH_OFFSET, _ARG0_LOW, _ARG1_LOW = 0, 4, 16, 24


def numbers(arch: str) -> dict[str, int]:
    """The syscall table the filter uses for ``arch`` (``uname -m``)."""
    if arch not in _TABLES:
        raise ValueError(f"no seccomp table for {arch}")
    return {**_TABLES[arch], **_UNIFIED}


@functools.cache
def build(arch: str = _libc.ARCH) -> bytes:
    """The filter program for ``arch`` as an array of ``struct sock_filter``; built once per
    process (a fork server builds it before it forks, so its children only install it)."""
    table = numbers(arch)
    deny = _ERRNO | errno.EPERM
    prog: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, _ARCH_OFFSET),
        (_JEQ, 1, 0, AUDIT_ARCH[arch]),
        (_RET, 0, 0, _KILL_PROCESS),
        (_LD_W_ABS, 0, 0, _NR),
    ]
    if arch == "x86_64":
        prog += [(_JGE, 0, 1, _X32_BIT), (_RET, 0, 0, deny)]
    for name in DENIED:
        if name in table:
            prog += [(_JEQ, 0, 1, table[name]), (_RET, 0, 0, deny)]
    prog += [(_JEQ, 0, 1, table["clone3"]), (_RET, 0, 0, _ERRNO | errno.ENOSYS)]
    # clone: refuse new namespaces (flags are arg 0 on both architectures)
    prog += [
        (_JEQ, 0, 3, table["clone"]),
        (_LD_W_ABS, 0, 0, _ARG0_LOW),
        (_JSET, 0, 1, CLONE_NEW_FLAGS),
        (_RET, 0, 0, deny),
        # ioctl(fd, TIOCSTI, ...): the request is an unsigned int, arg 1
        (_LD_W_ABS, 0, 0, _NR),
        (_JEQ, 0, 3, table["ioctl"]),
        (_LD_W_ABS, 0, 0, _ARG1_LOW),
        (_JEQ, 0, 1, _TIOCSTI),
        (_RET, 0, 0, deny),
        (_RET, 0, 0, _ALLOW),
    ]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(program: bytes | None = None) -> None:
    """Set ``PR_SET_NO_NEW_PRIVS`` and install the filter on this thread, for good.

    Raises:
        OSError: ``prctl`` refused (naming which), e.g. EINVAL without seccomp filter support.
    """
    program = build() if program is None else program
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, what="prctl(PR_SET_NO_NEW_PRIVS)")
    _libc.prctl(
        _PR_SET_SECCOMP,
        _SECCOMP_MODE_FILTER,
        ctypes.addressof(fprog),
        what="prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)",
    )
