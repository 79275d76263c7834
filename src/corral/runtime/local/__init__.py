"""The local runtime: each agent an OS process group on this machine.

What belongs here, one role a module:

- ``runtime``: :class:`LocalProcessRuntime`, the :class:`~corral.runtime.base.AgentRuntime`
  face that ties the others together, and what it reports (status, usage, logs);
- ``launching``: starting one agent, by exec or from its org's fork server;
- ``forkpool``: one fork server per organization, started on demand and closed when idle;
- ``forkclient``: the control plane's handle on one fork server;
- ``forkserver``: the fork server itself, a program of its own (``python -m``);
- ``supervision``: awaiting each agent's exit, stopping it and tearing its tree down;
- ``leftovers``: what an earlier control plane left running;
- ``limits`` and ``probing``: memory and CPU limits, and which mechanism this host allows;
- ``processes``: process identity (no recycled pid mistaken for an agent) and signalling;
- ``workspaces``: where an agent's files live, and who may read them.

Nothing here knows Kubernetes, and ``forkserver`` imports only the standard library: it runs
in a process of its own that agents are forked from, so nothing of the control plane may enter
it. That is also why this face imports its members lazily: ``python -m
corral.runtime.local.forkserver`` imports this package first, and must not pull the runtime
(psutil, the domain) into the fork server with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.runtime.local.launching import default_env
    from corral.runtime.local.processes import AgentUsage
    from corral.runtime.local.runtime import LocalProcessRuntime, RunAs

__all__ = ["AgentUsage", "LocalProcessRuntime", "RunAs", "default_env"]

_HOMES = {
    "AgentUsage": "corral.runtime.local.processes",
    "LocalProcessRuntime": "corral.runtime.local.runtime",
    "RunAs": "corral.runtime.local.runtime",
    "default_env": "corral.runtime.local.launching",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once looked up, an ordinary attribute
    return value
