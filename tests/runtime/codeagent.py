"""An agent the fork server can run: ``python -m tests.runtime.codeagent`` runs the Python
source in ``CORRAL_TEST_CODE`` as its ``__main__``, so the behaviours of :mod:`.agents` run
either way, exec'd (``python -c``) or forked by the server."""

from __future__ import annotations

import os

if __name__ == "__main__":
    source = os.environ["CORRAL_TEST_CODE"]
    exec(compile(source, "<agent>", "exec"), {"__name__": "__main__"})
