"""A control plane stand-in: starts one agent (which starts a child of its own) with the local
runtime, says so on stdout, then waits to be killed. Run as ``python standin.py ROOT MECHANISM``.
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


async def main(root: Path, mechanism: str) -> None:
    runtime = LocalProcessRuntime(root, mechanism=mechanism)
    status = await runtime.start(agents.spec("acme", "agent-orphan", FAMILY))
    sys.stdout.write(f"started {status.pid}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
