"""The exec path's trampoline: apply a sandbox policy, then execute the agent's command.

    python -m corral.runtime.sandbox.enter POLICY_FD -- ARGV...

Why a trampoline: a ``preexec_fn`` runs in a child of the (multi-threaded) control plane, where
anything beyond a few system calls risks a lock another thread held, and a PID namespace needs a
fork of its own. A fresh interpreter has neither problem. ``POLICY_FD`` is an inherited
descriptor (a pipe or a memfd) holding the policy as JSON, so it never shows in ``ps``; it is
read to the end and closed. The process this starts from is the one the death signal ties to.

Exit status: the command's own; 125 (and one line on stderr, ``corral-sandbox: ...``) if the
policy could not be read or applied; 127 if the command could not be executed.
"""

from __future__ import annotations

import os
import sys

from corral.runtime.sandbox.applying import apply
from corral.runtime.sandbox.errors import SandboxError
from corral.runtime.sandbox.policy import SandboxPolicy

__all__ = ["FAILED", "NOT_EXECUTED", "main"]

FAILED = 125
NOT_EXECUTED = 127


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        sys.stderr.write("usage: python -m corral.runtime.sandbox.enter POLICY_FD -- ARGV...\n")
        return FAILED
    parent = os.getppid()
    try:
        fd = int(args[0])
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        os.close(fd)
        policy = SandboxPolicy.decode(b"".join(chunks))
        apply(policy, parent=parent)
    except (SandboxError, OSError, ValueError) as exc:
        sys.stderr.write(f"corral-sandbox: {exc}\n")
        return FAILED
    argv = args[2:]
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"corral-sandbox: cannot execute {argv[0]}: {exc.strerror}\n")
    return NOT_EXECUTED


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
