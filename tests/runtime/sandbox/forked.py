"""Launch as the fork server does: a Python process that has imported the sandbox forks, and the
child applies the policy and runs a script as ``__main__``; the parent exits with its status.

    python forked.py POLICY_FD -- SCRIPT [ARGS...]
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback

from corral.runtime.sandbox import SandboxPolicy, apply


def main(args: list[str]) -> int:
    fd, script = int(args[0]), args[2]
    with os.fdopen(fd, "rb") as f:
        policy = SandboxPolicy.decode(f.read())
    launcher = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            apply(policy, parent=launcher)
            sys.argv = args[2:]
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    raise SystemExit(code if code >= 0 else 128 - code)
