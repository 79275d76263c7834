"""The names Corral gives Kubernetes objects, and the rules Kubernetes puts on names.

Manifests (:mod:`.manifests`), the runtime that applies them (:mod:`.runtime`) and the reader
of what the cluster reports back (:mod:`.status`) must agree on every name, label and
annotation, and on which strings may be one: they are defined here, once. Pure: no client, no
I/O.
"""

from __future__ import annotations

import hashlib
import re

from corral.domain.tenancy import DNS1123_LABEL, MANAGED_BY

__all__ = [
    "AGENT_UID",
    "ALLOW_DNS_POLICY",
    "ALLOW_NATS_POLICY",
    "ANNOTATION_AGENT_ID",
    "ANNOTATION_AGENT_NAME",
    "ANNOTATION_ORG_ID",
    "CONTAINER_NAME",
    "CREDS_DIR",
    "CREDS_FILE",
    "DEFAULT_DENY_POLICY",
    "ENV_CREDS_FILE",
    "ENV_WORKSPACE",
    "GPU_RESOURCE",
    "LABEL_AGENT",
    "LABEL_COMPONENT",
    "LABEL_MANAGED_BY",
    "LABEL_ROLE",
    "LABEL_TENANT",
    "LIMIT_RANGE_NAME",
    "QUOTA_NAME",
    "SECRET_READER_BINDING",
    "SECRET_READER_ROLE",
    "SECRET_VALUE_KEY",
    "SERVICE_ACCOUNT_NAME",
    "WORKSPACE_DIR",
    "agent_labels",
    "agent_selector",
    "creds_secret_name",
    "is_dns1123_subdomain",
    "is_label_key",
    "is_label_value",
    "label_safe",
    "workspace_claim_name",
]

QUOTA_NAME = "tenant-quota"
LIMIT_RANGE_NAME = "agent-limits"
SERVICE_ACCOUNT_NAME = "agent-worker-sa"
SECRET_READER_ROLE = "agent-secret-reader"
SECRET_READER_BINDING = "agent-secret-binding"
DEFAULT_DENY_POLICY = "default-deny-all"
ALLOW_DNS_POLICY = "allow-dns"
ALLOW_NATS_POLICY = "allow-nats"

LABEL_TENANT = "tenant"
LABEL_MANAGED_BY = "managed-by"
LABEL_COMPONENT = "corral.dev/component"
LABEL_AGENT = "corral.dev/agent"
LABEL_ROLE = "corral.dev/role"
ANNOTATION_AGENT_ID = "corral.dev/agent-id"
ANNOTATION_ORG_ID = "corral.dev/org-id"
ANNOTATION_AGENT_NAME = "corral.dev/agent-name"

CONTAINER_NAME = "agent"
AGENT_UID = 10001
CREDS_DIR = "/var/run/corral"
CREDS_FILE = "nats.creds"
WORKSPACE_DIR = "/workspace"
ENV_CREDS_FILE = "CORRAL_CREDS_FILE"  # what the SDK reads
ENV_WORKSPACE = "CORRAL_WORKSPACE"
GPU_RESOURCE = "nvidia.com/gpu"
SECRET_VALUE_KEY = "value"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def is_dns1123_subdomain(name: object) -> bool:
    if not isinstance(name, str) or not name or len(name) > 253:
        return False
    return all(DNS1123_LABEL.fullmatch(part) for part in name.split("."))


def is_label_value(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def is_label_key(key: object) -> bool:
    """A qualified name: ``[prefix/]name``, prefix a DNS-1123 subdomain, name at most 63."""
    if not isinstance(key, str) or not key:
        return False
    prefix, slash, name = key.rpartition("/")
    if slash and not is_dns1123_subdomain(prefix):
        return False
    return len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def label_safe(value: str) -> str:
    """``value`` if it is a valid label value, else a stable shortened form of it."""
    if is_label_value(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    head = "".join(c if c.isalnum() or c in "-_." else "-" for c in value)[:52].strip("-_.")
    return f"{head}-{digest}" if head else digest


def workspace_claim_name(agent_id: str) -> str:
    return f"workspace-{agent_id}"


def creds_secret_name(agent_id: str) -> str:
    return f"nats-creds-{agent_id}"


def agent_selector() -> dict[str, str]:
    """The labels every agent pod Corral runs carries, in every organization."""
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: "agent"}


def agent_labels(org: str, agent_id: str, role: str, *, component: str = "agent") -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_TENANT: org,
        LABEL_COMPONENT: component,
        LABEL_AGENT: label_safe(agent_id),
        LABEL_ROLE: label_safe(role),
    }
