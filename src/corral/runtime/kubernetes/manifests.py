"""Kubernetes manifests for organizations and agents, as plain dicts.

One namespace per organization (``org-<slug>``) carries the tenant's whole boundary: Pod
Security ``restricted``, the plan's ResourceQuota and LimitRange, NetworkPolicies that deny
everything but DNS and NATS, a ServiceAccount without an API token, and a Role that reads only
the secrets the organization granted. Each agent is a Pod with a PVC for its workspace and a
Secret for its NATS credentials. Pure builders: no client, no I/O; the objects' names and
labels are :mod:`.names`'s, :mod:`.runtime` sends what comes out (and the tests check it
against the schemas and Corral's own manifest checks).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from corral.domain.errors import InvalidInput
from corral.domain.grants import SecretGrant
from corral.domain.plans import QUOTA_RESOURCES
from corral.domain.quantities import Quantity, parse
from corral.domain.tenancy import Organization, is_dns1123_label, namespace_for
from corral.runtime.base import LaunchSpec
from corral.runtime.kubernetes import names

__all__ = [
    "agent_manifests",
    "org_manifests",
    "render_yaml",
    "secret_reader_names",
]

_PSA = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}
_TERMINATION_GRACE_SECONDS = 30
_TMP_SIZE = "256Mi"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _cpu(q: Quantity) -> str:
    """CPU in millicores, as the seed writes a LimitRange (``2000m``)."""
    return f"{q.milli}m"


def _meta(
    name: str,
    namespace: str | None,
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def secret_reader_names(grants: Iterable[SecretGrant], secret_names: Iterable[str]) -> list[str]:
    """The exact secret names the org's ``agent-secret-reader`` Role may ``get``.

    RBAC ``resourceNames`` are exact names: a glob such as ``agent-ssh-*`` written there matches
    only a secret literally called ``agent-ssh-*``. So a glob grant is expanded against the
    organization's actual secret names (and the Role must be re-applied when secrets are
    added), while an exact-name grant is kept even before its secret exists. Every agent of the
    org shares one ServiceAccount, so the Role holds the union of all grants; narrowing a grant
    to a role or an agent is enforced by Corral's vault, not by RBAC.
    """
    existing = list(secret_names)
    allowed: set[str] = set()
    for grant in grants:
        if grant.is_glob:
            allowed.update(n for n in existing if grant.matches(n))
        else:
            allowed.add(grant.pattern)
    return sorted(allowed)


def _namespace(org: Organization) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": _meta(org.namespace, None, {**org.labels, **_PSA}, org.annotations),
    }


def _resource_quota(org: Organization) -> dict[str, Any]:
    plan = org.plan
    hard = {r: plan.quota[r].render() for r in QUOTA_RESOURCES if r in plan.quota}
    if plan.gpu_limit > 0:
        hard[f"requests.{names.GPU_RESOURCE}"] = str(plan.gpu_limit)
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _meta(names.QUOTA_NAME, org.namespace, org.labels),
        "spec": {"hard": hard},
    }


def _limit_range(org: Organization) -> dict[str, Any]:
    lr = org.plan.limit_range
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": _meta(names.LIMIT_RANGE_NAME, org.namespace, org.labels),
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "default": {"cpu": _cpu(lr.default_cpu), "memory": lr.default_memory.render()},
                    "defaultRequest": {
                        "cpu": _cpu(lr.default_request_cpu),
                        "memory": lr.default_request_memory.render(),
                    },
                    "max": {"cpu": _cpu(lr.max_cpu), "memory": lr.max_memory.render()},
                }
            ]
        },
    }


def _network_policies(
    org: Organization, nats_namespace: str, nats_port: int
) -> list[dict[str, Any]]:
    def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(name, org.namespace, org.labels),
            "spec": {"podSelector": {}, **spec},
        }

    def namespace_peer(ns: str) -> dict[str, Any]:
        return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}

    return [
        policy(names.DEFAULT_DENY_POLICY, {"policyTypes": ["Ingress", "Egress"]}),
        policy(
            names.ALLOW_DNS_POLICY,
            {
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [
                            {
                                **namespace_peer("kube-system"),
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                            }
                        ],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                    }
                ],
            },
        ),
        policy(
            names.ALLOW_NATS_POLICY,
            {
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [namespace_peer(nats_namespace)],
                        "ports": [{"protocol": "TCP", "port": nats_port}],
                    }
                ],
            },
        ),
    ]


def _rbac(org: Organization, reader_names: Sequence[str]) -> list[dict[str, Any]]:
    # An empty resourceNames list would grant every secret in the namespace: no names, no rule.
    rules = (
        [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "verbs": ["get"],
                "resourceNames": list(reader_names),
            }
        ]
        if reader_names
        else []
    )
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(names.SERVICE_ACCOUNT_NAME, org.namespace, org.labels),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(names.SECRET_READER_ROLE, org.namespace, org.labels),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(names.SECRET_READER_BINDING, org.namespace, org.labels),
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": names.SERVICE_ACCOUNT_NAME,
                    "namespace": org.namespace,
                }
            ],
            "roleRef": {
                "kind": "Role",
                "name": names.SECRET_READER_ROLE,
                "apiGroup": "rbac.authorization.k8s.io",
            },
        },
    ]


def _org_secret(org: Organization, name: str, value: bytes) -> dict[str, Any]:
    if not names.is_dns1123_subdomain(name):
        raise InvalidInput(
            f"secret name {name!r} cannot name a Kubernetes Secret: use lower-case letters, "
            "digits, '-' and '.'",
            details={"secret": name},
        )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(name, org.namespace, {**org.labels, names.LABEL_COMPONENT: "secret"}),
        "type": "Opaque",
        "data": {names.SECRET_VALUE_KEY: _b64(value)},
    }


def org_manifests(
    org: Organization,
    *,
    grants: Sequence[SecretGrant] = (),
    secrets: Mapping[str, bytes] | None = None,
    nats_namespace: str = "nats",
    nats_port: int = 4222,
) -> list[dict[str, Any]]:
    """Everything an organization's namespace holds before any agent runs, in apply order.

    Namespace (tenant labels, plan annotations, Pod Security ``restricted``), ResourceQuota
    ``tenant-quota`` and LimitRange ``agent-limits`` from the plan, three NetworkPolicies
    (default deny; DNS to kube-dns; TCP ``nats_port`` to ``nats_namespace``), ServiceAccount
    ``agent-worker-sa`` without a token, the ``agent-secret-reader`` Role and its binding, and
    one Secret per entry of ``secrets`` (its value under the key ``value``).

    Args:
        org: the organization; its plan gives the quota and limit range.
        grants: the org's secret grants; globs are expanded against the names in ``secrets``
            (see :func:`secret_reader_names`).
        secrets: the org's secret values by name; ``None`` leaves Secrets out of the set.
        nats_namespace: the namespace NATS runs in.
        nats_port: the NATS client port.

    Raises:
        InvalidInput: a secret name that cannot name a Kubernetes Secret.
    """
    if not is_dns1123_label(nats_namespace):
        raise InvalidInput(f"NATS namespace {nats_namespace!r} is not a DNS-1123 label")
    secret_values = dict(secrets or {})
    secret_objs = [_org_secret(org, name, secret_values[name]) for name in sorted(secret_values)]
    return [
        _namespace(org),
        _resource_quota(org),
        _limit_range(org),
        *_network_policies(org, nats_namespace, nats_port),
        *_rbac(org, secret_reader_names(grants, secret_values)),
        *secret_objs,
    ]


def _resources(spec: LaunchSpec) -> dict[str, Any]:
    res = spec.resources
    limits: dict[str, str] = {"cpu": res.cpu_limit.render(), "memory": res.memory_limit.render()}
    if res.gpu > 0:
        limits[names.GPU_RESOURCE] = str(res.gpu)
    return {
        "requests": {"cpu": res.cpu_request.render(), "memory": res.memory_request.render()},
        "limits": limits,
    }


def _env(spec: LaunchSpec) -> list[dict[str, str]]:
    env = {"HOME": names.WORKSPACE_DIR, "TMPDIR": "/tmp", **spec.env}
    env[names.ENV_CREDS_FILE] = f"{names.CREDS_DIR}/{names.CREDS_FILE}"
    env[names.ENV_WORKSPACE] = names.WORKSPACE_DIR
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def _pod(
    spec: LaunchSpec, namespace: str, labels: Mapping[str, str], runtime_class: str | None
) -> dict[str, Any]:
    restricted: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    annotations = {
        names.ANNOTATION_AGENT_ID: spec.agent_id,
        names.ANNOTATION_ORG_ID: spec.org_id,
        names.ANNOTATION_AGENT_NAME: spec.name,
    }
    sandboxed = {"runtimeClassName": runtime_class} if runtime_class else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(spec.agent_id, namespace, labels, annotations),
        "spec": {
            **sandboxed,
            "serviceAccountName": names.SERVICE_ACCOUNT_NAME,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            # Corral decides whether a crashed agent comes back; the kubelet does not restart it.
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": _TERMINATION_GRACE_SECONDS,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": names.AGENT_UID,
                "runAsGroup": names.AGENT_UID,
                "fsGroup": names.AGENT_UID,
                **restricted,
            },
            "containers": [
                {
                    "name": names.CONTAINER_NAME,
                    "image": spec.image,
                    "imagePullPolicy": "IfNotPresent",
                    "args": list(spec.command),
                    "env": _env(spec),
                    "resources": _resources(spec),
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": names.AGENT_UID,
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                        **restricted,
                    },
                    "volumeMounts": [
                        {"name": "creds", "mountPath": names.CREDS_DIR, "readOnly": True},
                        {"name": "workspace", "mountPath": names.WORKSPACE_DIR},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "creds",
                    "secret": {
                        "secretName": names.creds_secret_name(spec.agent_id),
                        "defaultMode": 0o440,
                        "items": [{"key": names.CREDS_FILE, "path": names.CREDS_FILE}],
                    },
                },
                {
                    "name": "workspace",
                    "persistentVolumeClaim": {
                        "claimName": names.workspace_claim_name(spec.agent_id)
                    },
                },
                {"name": "tmp", "emptyDir": {"sizeLimit": _TMP_SIZE}},
            ],
        },
    }


def agent_manifests(
    org: Organization | str,
    spec: LaunchSpec,
    *,
    storage_class: str | None = None,
    workspace_size: str = "10Gi",
    runtime_class: str | None = None,
) -> list[dict[str, Any]]:
    """One agent's PVC ``workspace-<agent>``, credentials Secret and Pod ``<agent>``, in order.

    The Pod runs hardened (non-root, seccomp ``RuntimeDefault``, no privilege escalation, all
    capabilities dropped, read-only root filesystem, no service links, no API token), with the
    admitted resources (and an ``nvidia.com/gpu`` limit when it has GPUs), its NATS
    credentials mounted read-only at ``/var/run/corral/nats.creds`` and its workspace at
    ``/workspace``. ``storage_class=None`` leaves the cluster's default storage class.
    ``runtime_class`` names the RuntimeClass the Pod runs under (a sandboxed runtime such as
    gVisor's ``runsc`` or Kata Containers, chosen per plan); ``None`` is the node's default.

    Raises:
        InvalidInput: an agent id that cannot name a Pod, a bad workspace size or RuntimeClass.
    """
    if runtime_class is not None and not names.is_dns1123_subdomain(runtime_class):
        raise InvalidInput(f"RuntimeClass {runtime_class!r} is not a valid name")
    slug = org.slug if isinstance(org, Organization) else org
    namespace = namespace_for(slug)
    taken = (
        spec.agent_id,
        names.workspace_claim_name(spec.agent_id),
        names.creds_secret_name(spec.agent_id),
    )
    if not all(names.is_dns1123_subdomain(n) for n in taken):
        raise InvalidInput(
            f"agent id {spec.agent_id!r} cannot name a Kubernetes Pod: use lower-case letters, "
            "digits and '-', starting and ending with a letter or digit",
            details={"agent_id": spec.agent_id},
        )
    size = parse(workspace_size).render()
    if storage_class is not None and not names.is_dns1123_subdomain(storage_class):
        raise InvalidInput(f"storage class {storage_class!r} is not a valid name")
    labels = names.agent_labels(slug, spec.agent_id, spec.role)
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    }
    if storage_class is not None:
        claim_spec["storageClassName"] = storage_class

    def part(kind: str, name: str, component: str) -> dict[str, Any]:
        """The start of one of the agent's objects besides its pod."""
        agent = {names.ANNOTATION_AGENT_ID: spec.agent_id}
        component_labels = {**labels, names.LABEL_COMPONENT: component}
        meta = _meta(name, namespace, component_labels, agent)
        return {"apiVersion": "v1", "kind": kind, "metadata": meta}

    claim = part("PersistentVolumeClaim", names.workspace_claim_name(spec.agent_id), "workspace")
    claim["spec"] = claim_spec
    creds = part("Secret", names.creds_secret_name(spec.agent_id), "agent-creds")
    creds["type"] = "Opaque"
    creds["data"] = {names.CREDS_FILE: _b64(spec.creds.encode())}
    return [claim, creds, _pod(spec, namespace, labels, runtime_class)]


def render_yaml(manifests: Iterable[Mapping[str, Any]]) -> str:
    """The manifests as one multi-document YAML stream, keys in the order they were built."""
    return yaml.safe_dump_all(
        [dict(m) for m in manifests], sort_keys=False, default_flow_style=False, explicit_start=True
    )
