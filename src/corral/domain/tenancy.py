"""Organizations: the isolation boundary, its name rules and its Kubernetes identity."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from corral.domain.errors import InvalidInput
from corral.domain.ids import OrgId, OrgSlug
from corral.domain.plans import Plan

__all__ = [
    "DNS1123_LABEL",
    "MANAGED_BY",
    "Organization",
    "is_dns1123_label",
    "namespace_for",
    "validate_slug",
]

MANAGED_BY = "corral"
ANNOTATION_PREFIX = "corral.dev"
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def is_dns1123_label(text: object, *, max_length: int = 63) -> bool:
    """Whether ``text`` is a DNS-1123 label (the whole string) of at most ``max_length``."""
    return (
        isinstance(text, str)
        and len(text) <= max_length
        and DNS1123_LABEL.fullmatch(text) is not None
    )


_MAX_SLUG = 63 - len("org-")


def validate_slug(name: str) -> OrgSlug:
    """Check that ``name`` can name an organization.

    It must be a DNS-1123 label (lower-case letters, digits and ``-``, starting and ending
    with a letter or digit) short enough that ``org-<name>`` fits in 63 characters.

    Raises:
        InvalidInput: naming what is wrong with the name.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInput("organization name must not be empty", details={"name": name})
    if len(name) > _MAX_SLUG:
        raise InvalidInput(
            f"organization name {name!r} is {len(name)} characters; at most {_MAX_SLUG} "
            f"fit in the namespace 'org-<name>' (63)",
            details={"name": name, "max_length": _MAX_SLUG},
        )
    if not is_dns1123_label(name):
        raise InvalidInput(
            f"organization name {name!r} is not a DNS-1123 label: use lower-case letters, "
            "digits and '-', starting and ending with a letter or digit",
            details={"name": name},
        )
    return OrgSlug(name)


def namespace_for(slug: str) -> str:
    return f"org-{slug}"


@dataclass(frozen=True, slots=True)
class Organization:
    id: OrgId
    slug: OrgSlug
    plan: Plan
    created_at: datetime

    @property
    def namespace(self) -> str:
        return namespace_for(self.slug)

    @property
    def labels(self) -> dict[str, str]:
        """The seed's namespace labels."""
        return {"tenant": self.slug, "tier": self.plan.name, "managed-by": MANAGED_BY}

    @property
    def annotations(self) -> dict[str, str]:
        """The seed's namespace annotations."""
        return {
            f"{ANNOTATION_PREFIX}/org-id": self.id,
            f"{ANNOTATION_PREFIX}/plan": self.plan.name,
            f"{ANNOTATION_PREFIX}/agent-limit": str(self.plan.agent_limit),
        }
