"""``python -m corral.runtime.sandbox``: print what this host's sandbox can enforce (``--json``
for a machine), and the probe's throw-away trials (``--trial root|user WORKSPACE``)."""

from __future__ import annotations

import json
import os
import sys

from corral.runtime.sandbox.applying import apply
from corral.runtime.sandbox.policy import SandboxPolicy
from corral.runtime.sandbox.probe import NOBODY, probe

__all__ = ["main"]


def _run_trial(who: str, workspace: str) -> int:
    if who == "user" and os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    policy = SandboxPolicy.for_agent(
        workspace, uid=NOBODY if who == "root" else None, gid=NOBODY if who == "root" else None
    )
    try:
        apply(policy)
    except Exception as exc:
        sys.stdout.write(f"{exc}\n")  # the trial's answer to its parent
        return 1
    return 0


def main(args: list[str]) -> int:
    if args[:1] == ["--trial"]:
        return _run_trial(args[1], args[2])
    report = probe()
    if "--json" in args:
        sys.stdout.write(json.dumps(report.to_wire()) + "\n")
    else:
        sys.stdout.write(report.describe() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
