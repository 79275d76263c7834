"""Fixtures for the Kubernetes runtime's tests: organizations and launch specs."""

from __future__ import annotations

from datetime import UTC, datetime

from corral.domain.admission import ContainerRequest, apply_limit_range
from corral.domain.ids import OrgId, OrgSlug
from corral.domain.plans import PLANS
from corral.domain.tenancy import Organization
from corral.runtime.base import LaunchSpec


def make_org(slug: str = "acme-corp", plan: str = "standard") -> Organization:
    return Organization(
        OrgId("org_abc123"), OrgSlug(slug), PLANS[plan], datetime(2026, 1, 1, tzinfo=UTC)
    )


def make_spec(
    org: Organization | None = None,
    *,
    agent_id: str = "agent-acme-corp-dev-1a2b",
    gpu: int = 0,
    role: str = "developer",
    command: tuple[str, ...] = ("python", "-m", "corral.sdk.worker"),
) -> LaunchSpec:
    org = org or make_org()
    resources = apply_limit_range(ContainerRequest(gpu=gpu), org.plan.limit_range)
    return LaunchSpec(
        org=org.slug,
        org_id=org.id,
        agent_id=agent_id,
        name="dev",
        role=role,
        resources=resources,
        command=command,
        env={
            "CORRAL_ORG": org.slug,
            "CORRAL_AGENT_ID": agent_id,
            "CORRAL_NATS_URL": "nats://nats.nats:4222",
        },
        creds="-----BEGIN NATS USER JWT-----\neyJ0eXAi\n------END NATS USER JWT------\n",
    )
