"""``corral k8s render ORG``: the org's Kubernetes objects as YAML, for review or GitOps."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from corral.cli.context import Context, pass_ctx, run
from corral.control.manifests import render_org
from corral.domain.grants import SecretGrant
from corral.domain.ids import OrgId, OrgSlug
from corral.domain.plans import get_plan
from corral.domain.tenancy import Organization

__all__ = ["k8s"]


@click.group()
def k8s() -> None:
    """Kubernetes: render what the Kubernetes runtime applies."""


@k8s.command("render")
@click.argument("org")
@click.option("--nats-namespace", default="nats", show_default=True)
@click.option("--nats-port", type=int, default=4222, show_default=True)
@pass_ctx
def render(ctx: Context, org: str, nats_namespace: str, nats_port: int) -> None:
    """Print ORG's Namespace, ResourceQuota, LimitRange, NetworkPolicies, ServiceAccount,
    Role/RoleBinding and Secrets (names only: values are write-only) as YAML."""

    def body() -> None:
        data = ctx.client.get(f"/v1/orgs/{org}")
        organization = Organization(
            OrgId(data["id"]),
            OrgSlug(data["name"]),
            get_plan(data["plan"]),
            datetime.fromisoformat(data["createdAt"]),
        )
        grants = [_grant(g) for g in ctx.client.get(f"/v1/orgs/{org}/grants").get("grants", [])]
        names = [s["name"] for s in ctx.client.get(f"/v1/orgs/{org}/secrets").get("secrets", [])]
        rendered = render_org(
            organization,
            grants=grants,
            secret_names=names,
            nats_namespace=nats_namespace,
            nats_port=nats_port,
        )
        click.echo(rendered, nl=False)

    run(body)


def _grant(g: dict[str, Any]) -> SecretGrant:
    return SecretGrant(
        pattern=str(g.get("pattern") or g.get("secret")),
        role=g.get("role"),
        agent=g.get("agent"),
    )
