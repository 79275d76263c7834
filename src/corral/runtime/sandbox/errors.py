"""The sandbox's two errors, kept free of the rest of Corral so the fork server can raise them.

::

    SandboxError            a step of applying a policy failed (``step``, ``reason``)
    └── SandboxUnavailable  strict mode: the kernel lacks a feature the policy needs (``feature``)

The launcher translates them into the platform's error tree (``Unavailable``) at its edge.
"""

from __future__ import annotations

__all__ = ["SandboxError", "SandboxUnavailable"]


class SandboxError(Exception):
    """Applying the sandbox failed at ``step``; the agent must not run."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"sandbox step {step!r} failed: {reason}")
        self.step = step
        self.reason = reason


class SandboxUnavailable(SandboxError):
    """Strict mode refused: ``feature`` is missing on this kernel or for this user."""

    def __init__(self, feature: str, reason: str) -> None:
        super().__init__("probe", f"{feature} is not available: {reason}")
        self.feature = feature
