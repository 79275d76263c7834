"""Every manifest Corral builds validates against the Kubernetes schemas and its own checks."""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from corral.domain.errors import InvalidInput
from corral.domain.grants import SecretGrant
from corral.domain.plans import PLANS
from corral.runtime.kubernetes import manifests as m
from corral.runtime.kubernetes import names
from tests.k8s.checks import check_manifests
from tests.k8s.factories import make_org, make_spec

# The oldest and newest Kubernetes versions kubernetes-validate bundles schemas for.
OLDEST = all_versions()[0].rsplit(".", 1)[0]
NEWEST = all_versions()[-1].rsplit(".", 1)[0]
VERSIONS = sorted({OLDEST, NEWEST})

GRANTS = (SecretGrant("github-token"), SecretGrant("slack-webhook"), SecretGrant("agent-ssh-*"))
SECRETS = {
    "github-token": b"ghp_x",
    "slack-webhook": b"https://hooks.example/x",
    "agent-ssh-deploy": b"-----BEGIN KEY-----",
    "agent-ssh-ci": b"-----BEGIN KEY-----",
    "db-password": b"hunter2",
}


@functools.cache
def _validate(text: str, version: str) -> str:
    result: str = kubernetes_validate.validate(json.loads(text), version, strict=True)
    return result


def validate(obj: dict[str, Any], version: str) -> str:
    """Strict schema validation, once per distinct object (schemas are slow to load)."""
    return _validate(json.dumps(obj, sort_keys=True), version)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def all_manifest_sets() -> list[Any]:
    cases = []
    for plan in PLANS:
        for with_grants in (False, True):
            for gpu in (0, 1):
                cases.append(
                    pytest.param(
                        plan, with_grants, gpu, id=f"{plan}-grants{int(with_grants)}-gpu{gpu}"
                    )
                )
    return cases


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("plan", "with_grants", "gpu"), all_manifest_sets())
def test_every_manifest_validates_strictly_and_passes_the_project_checks(
    version: str, plan: str, with_grants: bool, gpu: int
) -> None:
    org = make_org(plan=plan)
    objs = m.org_manifests(
        org, grants=GRANTS if with_grants else (), secrets=SECRETS if with_grants else None
    )
    objs += m.agent_manifests(org, make_spec(org, gpu=gpu), storage_class="standard-rwo")
    for obj in objs:
        assert validate(obj, version) == version
    assert check_manifests(objs) == []


def test_the_validated_versions_span_what_the_schema_package_bundles() -> None:
    assert OLDEST == "1.25"
    assert NEWEST >= "1.37"


def test_standard_plan_reproduces_the_seed_namespace_quota_and_limit_range() -> None:
    objs = m.org_manifests(make_org())
    ns = one(objs, "Namespace")
    assert ns["metadata"]["name"] == "org-acme-corp"
    labels = ns["metadata"]["labels"]
    assert {k: labels[k] for k in ("tenant", "tier", "managed-by")} == {
        "tenant": "acme-corp",
        "tier": "standard",
        "managed-by": "corral",
    }
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert ns["metadata"]["annotations"] == {
        "corral.dev/org-id": "org_abc123",
        "corral.dev/plan": "standard",
        "corral.dev/agent-limit": "10",
    }
    quota = one(objs, "ResourceQuota", "tenant-quota")
    assert quota["metadata"]["namespace"] == "org-acme-corp"
    assert quota["spec"]["hard"] == {
        "requests.cpu": "10",
        "requests.memory": "40Gi",
        "limits.cpu": "20",
        "limits.memory": "80Gi",
        "persistentvolumeclaims": "20",
        "pods": "15",
    }
    limits = one(objs, "LimitRange", "agent-limits")
    assert limits["spec"]["limits"] == [
        {
            "type": "Container",
            "default": {"cpu": "2000m", "memory": "8Gi"},
            "defaultRequest": {"cpu": "500m", "memory": "2Gi"},
            "max": {"cpu": "4000m", "memory": "16Gi"},
        }
    ]


def test_a_plan_with_gpus_caps_them_in_the_quota_and_others_do_not_mention_them() -> None:
    enterprise = one(m.org_manifests(make_org(plan="enterprise")), "ResourceQuota")
    assert enterprise["spec"]["hard"]["requests.nvidia.com/gpu"] == "4"
    free = one(m.org_manifests(make_org(plan="free")), "ResourceQuota")
    assert not any("gpu" in key for key in free["spec"]["hard"])


def test_network_policies_deny_everything_but_dns_and_nats() -> None:
    objs = m.org_manifests(make_org(), nats_namespace="messaging", nats_port=4333)
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(objs, "NetworkPolicy")}
    assert set(policies) == {"default-deny-all", "allow-dns", "allow-nats"}
    assert policies["default-deny-all"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert all("ingress" not in spec for spec in policies.values())
    dns = policies["allow-dns"]["egress"][0]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    nats = policies["allow-nats"]["egress"][0]
    assert nats["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "messaging"}}}
    ]
    assert nats["ports"] == [{"protocol": "TCP", "port": 4333}]


def test_the_service_account_gets_no_token_and_the_binding_names_it() -> None:
    objs = m.org_manifests(make_org())
    sa = one(objs, "ServiceAccount", "agent-worker-sa")
    assert sa["automountServiceAccountToken"] is False
    binding = one(objs, "RoleBinding", "agent-secret-binding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "agent-worker-sa", "namespace": "org-acme-corp"}
    ]
    assert binding["roleRef"] == {
        "kind": "Role",
        "name": "agent-secret-reader",
        "apiGroup": "rbac.authorization.k8s.io",
    }


def test_a_glob_grant_is_expanded_to_the_orgs_actual_secret_names() -> None:
    role = one(m.org_manifests(make_org(), grants=GRANTS, secrets=SECRETS), "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get"],
            "resourceNames": ["agent-ssh-ci", "agent-ssh-deploy", "github-token", "slack-webhook"],
        }
    ]


def test_an_exact_grant_is_kept_before_its_secret_exists_and_a_glob_matching_nothing_is_dropped() -> (
    None
):
    assert m.secret_reader_names([SecretGrant("github-token"), SecretGrant("agent-ssh-*")], []) == [
        "github-token"
    ]


def test_a_role_with_no_granted_names_has_no_rule_rather_than_one_for_every_secret() -> None:
    role = one(
        m.org_manifests(make_org(), grants=[SecretGrant("nothing-*")], secrets=SECRETS), "Role"
    )
    assert role["rules"] == []


def test_org_secrets_carry_their_values_base64_encoded() -> None:
    objs = m.org_manifests(make_org(), secrets={"github-token": b"ghp_x"})
    secret = one(objs, "Secret", "github-token")
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["value"]) == b"ghp_x"


def test_a_secret_name_kubernetes_cannot_hold_is_refused() -> None:
    with pytest.raises(InvalidInput, match="GITHUB_TOKEN"):
        m.org_manifests(make_org(), secrets={"GITHUB_TOKEN": b"x"})


def test_the_agent_pod_is_hardened_and_mounts_its_credentials_read_only() -> None:
    org = make_org()
    spec = make_spec(org)
    claim, creds, pod = m.agent_manifests(org, spec, storage_class="fast", workspace_size="20Gi")
    assert claim["metadata"]["name"] == f"workspace-{spec.agent_id}"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "20Gi"}},
        "storageClassName": "fast",
    }
    assert base64.b64decode(creds["data"]["nats.creds"]).decode() == spec.creds
    assert pod["metadata"]["name"] == spec.agent_id
    assert pod["metadata"]["namespace"] == "org-acme-corp"
    assert pod["metadata"]["labels"] == {
        "managed-by": "corral",
        "tenant": "acme-corp",
        "corral.dev/component": "agent",
        "corral.dev/agent": spec.agent_id,
        "corral.dev/role": "developer",
    }
    pod_spec = pod["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["enableServiceLinks"] is False
    assert pod_spec["serviceAccountName"] == "agent-worker-sa"
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] == names.AGENT_UID
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod_spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["args"] == list(spec.command)
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "2Gi"},
        "limits": {"cpu": "2", "memory": "8Gi"},
    }
    mounts = {v["name"]: v for v in container["volumeMounts"]}
    assert mounts["creds"] == {"name": "creds", "mountPath": "/var/run/corral", "readOnly": True}
    assert mounts["workspace"]["mountPath"] == "/workspace"
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert volumes["creds"]["secret"]["secretName"] == creds["metadata"]["name"]
    assert volumes["workspace"]["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CORRAL_CREDS_FILE"] == "/var/run/corral/nats.creds"
    assert env["CORRAL_ORG"] == "acme-corp"
    assert not any(spec.creds in e["value"] for e in container["env"])


def test_an_agent_with_gpus_gets_an_nvidia_limit_and_one_without_does_not() -> None:
    org = make_org(plan="enterprise")
    *_, gpu_pod = m.agent_manifests(org, make_spec(org, gpu=2))
    assert gpu_pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    *_, cpu_pod = m.agent_manifests(org, make_spec(org, gpu=0))
    assert "nvidia.com/gpu" not in cpu_pod["spec"]["containers"][0]["resources"]["limits"]


def test_without_a_storage_class_the_claim_uses_the_clusters_default() -> None:
    claim, *_ = m.agent_manifests(make_org(), make_spec())
    assert "storageClassName" not in claim["spec"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"


@pytest.mark.parametrize("agent_id", ["Agent_1", "agent..x", "-agent", "a" * 250])
def test_an_agent_id_that_cannot_name_a_pod_is_refused(agent_id: str) -> None:
    with pytest.raises(InvalidInput):
        m.agent_manifests(make_org(), make_spec(agent_id=agent_id))


def test_a_bad_workspace_size_is_refused() -> None:
    with pytest.raises(InvalidInput, match="quantity"):
        m.agent_manifests(make_org(), make_spec(), workspace_size="10 gigabytes")


def test_a_long_role_becomes_a_valid_stable_label_value() -> None:
    role = "a-role-name-that-is-far-too-long-for-a-kubernetes-label-value-to-hold-it-all"
    *_, pod = m.agent_manifests(make_org(), make_spec(role=role))
    value = pod["metadata"]["labels"]["corral.dev/role"]
    assert len(value) <= 63
    assert value == names.label_safe(role)
    assert check_manifests([pod]) == []


def test_render_yaml_is_a_multi_document_stream_that_parses_back_unchanged() -> None:
    org = make_org()
    objs = m.org_manifests(org, grants=GRANTS, secrets=SECRETS) + m.agent_manifests(
        org, make_spec()
    )
    text = m.render_yaml(objs)
    assert text.count("\n---\n") + 1 == len(objs)
    assert list(yaml.safe_load_all(text)) == objs
    assert "requests.cpu: '10'" in text  # numbers that are quantities stay strings


@pytest.mark.parametrize("version", VERSIONS)
def test_a_runtime_class_puts_the_pod_in_that_sandbox_and_still_validates(version: str) -> None:
    org = make_org()
    objs = m.agent_manifests(org, make_spec(org), runtime_class="gvisor")
    assert one(objs, "Pod")["spec"]["runtimeClassName"] == "gvisor"
    for obj in objs:
        assert validate(obj, version) == version
    assert check_manifests(objs) == []
    *_, plain = m.agent_manifests(org, make_spec(org))
    assert "runtimeClassName" not in plain["spec"]  # the nodes' default runtime


@pytest.mark.parametrize("name", ["gVisor", "runsc/../x", "", "-kata"])
def test_a_runtime_class_that_cannot_be_a_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="RuntimeClass"):
        m.agent_manifests(make_org(), make_spec(), runtime_class=name or "-")
