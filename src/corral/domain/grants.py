"""Secret grants: which secret names an organization's agents may read.

A grant names secrets by an exact name or a shell-style glob (``agent-ssh-*``) and may be
narrowed to one role or one agent. Matching is case-sensitive, on the name alone. Like the
seed's Kubernetes Role, a grant only ever allows ``get``; nothing is granted by default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from corral.domain.errors import InvalidInput
from corral.domain.tenancy import is_dns1123_label

__all__ = ["MAX_PATTERN_LENGTH", "SecretGrant", "validate_pattern"]

MAX_PATTERN_LENGTH = 253
_GLOB_CHARS = frozenset("*?[")
# Secret-name characters plus the glob syntax fnmatch understands: * ? [seq] [!seq].
_PATTERN = re.compile(r"^[a-z0-9.*?\[\]!-]+$")
_AGENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_ROLE = 63
_MAX_AGENT = 128


def validate_pattern(pattern: object) -> str:
    """Check that ``pattern`` can name secrets: a secret name or a glob over secret names.

    Allowed are lower-case letters, digits, ``.`` and ``-`` (the characters of a secret
    name) and the glob characters ``*``, ``?``, ``[``, ``]`` and ``!``.

    Raises:
        InvalidInput: naming what is wrong with the pattern.
    """
    if not isinstance(pattern, str) or not pattern:
        raise InvalidInput("grant pattern must be a non-empty string", details={"field": "pattern"})
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidInput(
            f"grant pattern is {len(pattern)} characters; at most {MAX_PATTERN_LENGTH} allowed",
            details={"field": "pattern", "max_length": MAX_PATTERN_LENGTH},
        )
    if not _PATTERN.fullmatch(pattern):
        raise InvalidInput(
            f"grant pattern {pattern!r} may hold only lower-case letters, digits, '.', '-' "
            "and the glob characters '*', '?', '[', ']', '!'",
            details={"field": "pattern", "pattern": pattern},
        )
    if pattern.count("[") != pattern.count("]"):
        raise InvalidInput(
            f"grant pattern {pattern!r} has an unbalanced '[' or ']'",
            details={"field": "pattern", "pattern": pattern},
        )
    return pattern


def _check_subject(role: object, agent: object) -> None:
    if role is not None and agent is not None:
        raise InvalidInput(
            "a grant names a role or an agent, not both", details={"role": role, "agent": agent}
        )
    if role is not None and (not is_dns1123_label(role, max_length=_MAX_ROLE)):
        raise InvalidInput(
            f"grant role {role!r} is not a DNS-1123 label of at most {_MAX_ROLE} characters",
            details={"field": "role"},
        )
    if agent is not None and (
        not isinstance(agent, str) or len(agent) > _MAX_AGENT or not _AGENT.fullmatch(agent)
    ):
        raise InvalidInput(
            f"grant agent {agent!r} is not an agent id (letters, digits, '.', '_', '-'; "
            f"at most {_MAX_AGENT} characters)",
            details={"field": "agent"},
        )


@dataclass(frozen=True, slots=True)
class SecretGrant:
    """Read access to the secrets whose names match ``pattern``.

    ``role`` and ``agent`` narrow the grant to agents of that role or to that one agent;
    ``None`` leaves it open to every agent of the organization. Naming both is invalid.

    Raises:
        InvalidInput: on construction, when the pattern, role or agent is malformed.
    """

    pattern: str
    role: str | None = None
    agent: str | None = None

    def __post_init__(self) -> None:
        validate_pattern(self.pattern)
        _check_subject(self.role, self.agent)

    @property
    def is_glob(self) -> bool:
        """Whether ``pattern`` is a glob rather than one exact name."""
        return any(c in _GLOB_CHARS for c in self.pattern)

    def matches(self, secret_name: str) -> bool:
        return fnmatchcase(secret_name, self.pattern)

    def applies_to(self, agent_id: str, role: str) -> bool:
        """Whether the grant is for this agent: it names it, its role, or neither."""
        if self.agent is not None:
            return self.agent == agent_id
        if self.role is not None:
            return self.role == role
        return True

    def covers(self, agent_id: str, role: str, secret_name: str) -> bool:
        """Whether an agent with this id and role may read ``secret_name`` under this grant."""
        return self.applies_to(agent_id, role) and self.matches(secret_name)

    def to_wire(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "role": self.role, "agent": self.agent}

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> SecretGrant:
        """Read ``{"pattern": ..., "role": ..., "agent": ...}``; unknown keys are rejected."""
        unknown = set(obj) - {"pattern", "role", "agent"}
        if unknown:
            raise InvalidInput(
                f"unknown grant field(s): {', '.join(sorted(unknown))}",
                details={"fields": sorted(unknown)},
            )
        pattern = validate_pattern(obj.get("pattern"))
        return cls(pattern=pattern, role=obj.get("role"), agent=obj.get("agent"))
