"""The fork server's process holds nothing of the control plane (only the standard library and
the sandbox, itself standard library only), and of its preloads nothing agents do not use:
agents are forked from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from corral.runtime.local import default_env
from corral.runtime.local.forkclient import Zygote
from corral.runtime.local.forkserver import Launch
from tests.runtime import agents

_PROBE = """
import json, sys
before = set(sys.modules)  # what the interpreter and its site hooks load anyway
import corral.runtime.local.forkserver
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_starting_the_fork_server_imports_no_other_module_of_corral_nor_any_library() -> None:
    """import-linter sees the server's own imports; this sees its package's face as well,
    which ``python -m`` imports first."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(done.stdout))  # by the import
    ours = {m for m in loaded if m == "corral" or m.startswith("corral.")}
    sandbox = {m for m in ours if m.startswith("corral.runtime.sandbox")}
    assert "corral.runtime.sandbox.applying" in sandbox  # what each child applies
    assert ours - sandbox == {
        "corral",
        "corral.runtime",
        "corral.runtime.local",
        "corral.runtime.local.forkserver",
        "corral.runtime.local.forkchild",  # the child's side of it
        "corral.runtime.local.forkbox",  # its box, as root (the org's uid)
    }
    libraries = {m.partition(".")[0] for m in loaded} - set(sys.stdlib_module_names)
    assert libraries == {"corral"}, libraries


# what a child holds before its own code imports anything is what the server held when it forked
_AIOHTTP_PROBE = """
import json, sys
held = sorted(m for m in sys.modules if m.partition(".")[0] == "aiohttp")
preloaded = sorted(m for m in ("nats", "corral.sdk.agent") if m in sys.modules)
import aiohttp
print(json.dumps({"held": held, "preloaded": preloaded, "imported": aiohttp.__name__}))
"""


async def test_the_preloaded_server_holds_no_aiohttp_and_an_agent_can_still_import_it(
    tmp_path: Path,
) -> None:
    server = await Zygote.start(default_env())  # the default preloads: the NATS client's too
    log = os.open(tmp_path / "out.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        env = {**default_env(), "CORRAL_TEST_CODE": agents.source(_AIOHTTP_PROBE)}
        launch = Launch(agents.CODE_AGENT, ("python",), env, str(tmp_path), None)
        child = await server.spawn(launch, log=log, procs=())
        status = await child.wait()
    finally:
        os.close(log)
        await server.close()
    out = (tmp_path / "out.log").read_text()
    assert status == 0, out
    seen = json.loads(out.splitlines()[-1])
    assert seen["preloaded"] == ["corral.sdk.agent", "nats"]  # the preloads did run
    assert seen["held"] == []
    assert seen["imported"] == "aiohttp"
