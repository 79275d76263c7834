"""The exec path's trampoline: apply a sandbox policy, then execute the agent's command.

    python -m corral.runtime.sandbox.enter POLICY_FD [REPORT_FD] -- ARGV...

Why a trampoline: a ``preexec_fn`` runs in a child of the (multi-threaded) control plane, where
anything beyond a few system calls risks a lock another thread held, and a PID namespace needs a
fork of its own. A fresh interpreter has neither problem. ``POLICY_FD`` is an inherited
descriptor (a pipe or a memfd) holding the policy as JSON, so it never shows in ``ps``; it is
read to the end and closed. The process this starts from is the one the death signal ties to.
``REPORT_FD``, if given, is the write end of a pipe the launcher reads to its end: nothing
(it closes at the exec) when the command runs, or why it does not.

Exit status: the command's own; 125 (and one line on stderr, ``corral-sandbox: ...``) if the
policy could not be read or applied; 127 if the command could not be executed.
"""

from __future__ import annotations

import contextlib
import os
import sys

from corral.runtime.sandbox.applying import apply
from corral.runtime.sandbox.errors import SandboxError
from corral.runtime.sandbox.policy import SandboxPolicy

__all__ = ["FAILED", "NOT_EXECUTABLE", "NOT_EXECUTED", "main"]

FAILED = 125
NOT_EXECUTED = 127
#: how a report that the command itself could not be executed begins
NOT_EXECUTABLE = "cannot execute: "


def main(args: list[str]) -> int:
    try:
        split = args.index("--")
    except ValueError:
        split = -1
    if split not in (1, 2) or len(args) <= split + 1:
        sys.stderr.write(
            "usage: python -m corral.runtime.sandbox.enter POLICY_FD [REPORT_FD] -- ARGV...\n"
        )
        return FAILED
    parent = os.getppid()
    report = -1
    try:
        if split == 2:
            report = int(args[1])
        fd = int(args[0])
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        os.close(fd)
        policy = SandboxPolicy.decode(b"".join(chunks))
        apply(policy, parent=parent)
    except (SandboxError, OSError, ValueError) as exc:
        _fail(report, f"{exc}")
        return FAILED
    argv = args[split + 1 :]
    if report >= 0:
        os.set_inheritable(report, False)  # its end-of-file is the launcher's "started"
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        _fail(report, f"{NOT_EXECUTABLE}{argv[0]}: {exc.strerror}")
    return NOT_EXECUTED


def _fail(report: int, text: str) -> None:
    """Say why on stderr (the agent's log) and, when there is one, on the report pipe."""
    sys.stderr.write(f"corral-sandbox: {text}\n")
    if report >= 0:
        with contextlib.suppress(OSError):
            os.write(report, text.encode(errors="replace")[:4000])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
