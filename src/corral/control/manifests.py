"""What the Kubernetes runtime applies for an organization, rendered as YAML for review or
GitOps (``corral k8s render``). The edges ask here rather than importing the runtime; secret
values are never part of the result: the vault keeps them.
"""

from __future__ import annotations

from collections.abc import Iterable

from corral.domain.grants import SecretGrant
from corral.domain.tenancy import Organization
from corral.runtime.kubernetes.manifests import org_manifests, render_yaml

__all__ = ["render_org"]


def render_org(
    org: Organization,
    *,
    grants: list[SecretGrant],
    secret_names: Iterable[str],
    nats_namespace: str,
    nats_port: int,
) -> str:
    """The org's Namespace, ResourceQuota, LimitRange, NetworkPolicies, ServiceAccount,
    Role/RoleBinding and Secrets (names only) as one YAML stream."""
    docs = org_manifests(
        org,
        grants=grants,
        secrets=dict.fromkeys(secret_names, b""),
        nats_namespace=nats_namespace,
        nats_port=nats_port,
    )
    for doc in docs:
        if doc.get("kind") == "Secret":
            doc.pop("data", None)  # the vault keeps values; they are never printed
    return render_yaml(docs)
