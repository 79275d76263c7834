"""Task dispatch: accepting tasks, placing them on agents, delivering them, and recording what
agents report about them.

Belongs here: the dispatcher loop (``dispatcher``), intake and task queries (``intake``), the
task book of unfinished tasks and agents' slots (``book``), the placement snapshot of agents
(``snapshot``), the reaper of idle and silent agents (``reaping``) and the consumer of agents'
events (``events``).

Must not be here: an agent's lifecycle (provision, pause, resume, terminate, restart) — that is
:class:`~corral.control.lifecycle.Controller`'s, which this package calls and which never
imports it. Outside code uses :class:`Dispatcher` (and :class:`Submission`, what it takes) only; the modules behind it are private to
the package (an import-linter contract keeps it so).
"""

from __future__ import annotations

from corral.control.dispatch.dispatcher import Dispatcher
from corral.control.dispatch.intake import Submission

__all__ = ["Dispatcher", "Submission"]
