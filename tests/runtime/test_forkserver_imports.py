"""The fork server's process holds nothing of the control plane (only the standard library and
the sandbox, itself standard library only): agents are forked from it."""

from __future__ import annotations

import json
import subprocess
import sys

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
