"""Checkpoints: an agent's state kept as JSON in its workspace across a pause.

The platform asks for a checkpoint before it stops a paused agent, and the agent saves one on
any graceful stop; the next start reads it back. The workspace outlives the process (a
directory, or a PVC on Kubernetes), so nothing else needs to store agent state.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["CHECKPOINT_FILE", "load", "save"]

log = logging.getLogger("corral.sdk")

CHECKPOINT_FILE = ".corral-checkpoint.json"


def _path(workspace: Path) -> Path:
    return workspace / CHECKPOINT_FILE


def save(workspace: Path, state: dict[str, Any]) -> int:
    """Write ``state`` into ``workspace`` at once (a crash leaves the previous checkpoint
    whole), readable by the agent alone (0600); returns its size in bytes."""
    data = json.dumps(state).encode()
    tmp = _path(workspace).with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file left behind by an older version keeps no wider mode
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
    finally:
        if fd >= 0:
            os.close(fd)
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
