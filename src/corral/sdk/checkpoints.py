"""Checkpoints: an agent's state kept as JSON in its workspace across a pause.

The platform asks for a checkpoint before it stops a paused agent, and the agent saves one on
any graceful stop; the next start reads it back. The workspace outlives the process (a
directory, or a PVC on Kubernetes), so nothing else needs to store agent state.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["CHECKPOINT_FILE", "load", "save"]

log = logging.getLogger("corral.sdk")

CHECKPOINT_FILE = ".corral-checkpoint.json"


def _path(workspace: Path) -> Path:
    return workspace / CHECKPOINT_FILE


def save(workspace: Path, state: dict[str, Any]) -> int:
    """Write ``state`` into ``workspace`` at once (a crash leaves the previous checkpoint
    whole); returns its size in bytes."""
    data = json.dumps(state).encode()
    tmp = _path(workspace).with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(_path(workspace))
    return len(data)


def load(workspace: Path) -> dict[str, Any] | None:
    """The state last saved in ``workspace``; None if there is none, or none readable."""
    path = _path(workspace)
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except ValueError:
        log.warning("ignoring an unreadable checkpoint")
        return None
    return state if isinstance(state, dict) else None
