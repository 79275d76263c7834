"""A control plane stand-in: starts one agent (which starts a child of its own) with the local
runtime, says so on stdout (``started <agent pid> <fork server pid, or 0>``), then waits to be
killed. Run as ``python standin.py ROOT MECHANISM LAUNCH [ADOPT_SECONDS]`` (LAUNCH: ``exec`` or
``zygote``; ADOPT_SECONDS: a replica's runtime, whose agents outlive it that long).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from corral.runtime.local import LocalProcessRuntime
from tests.runtime import agents

FAMILY = """
    child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    with open("family.tmp", "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.replace("family.tmp", "family.txt")
    print(READY, AGENT, flush=True)
    signal.pause()
"""


async def main(root: Path, mechanism: str, launch: str, adopt: float) -> None:
    runtime = (
        LocalProcessRuntime(root, mechanism=mechanism, adopt_seconds=adopt)
        if adopt
        else LocalProcessRuntime(root, mechanism=mechanism)
    )
    status = await runtime.start(agents.spec("acme", "agent-orphan", FAMILY, launch=launch))
    sys.stdout.write(f"started {status.pid} {runtime.zygote_pid('acme') or 0}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    adopt = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], adopt))
