"""Checks on Kubernetes manifests that JSON schemas do not make.

``kubernetes-validate`` in strict mode catches unknown fields, wrong types and missing required
fields, but a schema says nothing of enum values (``imagePullPolicy: Sometimes``), malformed
quantities (``1 gigabyte``), DNS-1123 names, Pod Security ``restricted`` compliance, or whether
an organization's namespace comes with the NetworkPolicies that keep it apart. The API server
would refuse some of these at admission and silently accept others; these checks say so before
anything is sent. Pure: plain dicts in, a list of :class:`Problem` out. Only the tests use
them, on what the manifest builders and the Helm chart produce; the naming rules they apply
are the runtime's own (:mod:`corral.runtime.kubernetes.names`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from corral.domain.errors import InvalidInput
from corral.domain.quantities import parse
from corral.domain.tenancy import is_dns1123_label
from corral.runtime.kubernetes.names import is_dns1123_subdomain, is_label_key, is_label_value

__all__ = ["Problem", "check_manifest", "check_manifests"]


_IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_RESTART_POLICIES = ("Always", "OnFailure", "Never")
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_POLICY_TYPES = ("Ingress", "Egress")
_ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
_VOLUME_MODES = ("Filesystem", "Block")
_SECCOMP_TYPES = ("RuntimeDefault", "Localhost", "Unconfined")
_LIMIT_TYPES = ("Container", "Pod", "PersistentVolumeClaim")
_ROLE_REF_KINDS = ("Role", "ClusterRole")
_SUBJECT_KINDS = ("ServiceAccount", "User", "Group")
_RBAC_VERBS = (
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "escalate",
    "bind",
    "impersonate",
    "approve",
    "sign",
    "use",
    "*",
)
_READ_VERBS = frozenset({"get", "list", "watch", "*"})
_PSA_LEVELS = ("privileged", "baseline", "restricted")
_PSA_MODES = ("enforce", "audit", "warn")
# Volume types the Pod Security "restricted" profile allows.
_RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
_VOLUME_META_KEYS = frozenset({"name"})
# Kinds whose spec.template is a pod template, checked like a pod (but may hold an API token).
_WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"})
# Names whose metadata.name must be a DNS-1123 label rather than a subdomain.
_LABEL_NAMED_KINDS = frozenset({"Namespace", "Service"})


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one manifest: which object, where in it, and what."""

    obj: str  # "Kind namespace/name"
    path: str  # dotted path inside the object, "" for the object as a whole
    message: str

    def __str__(self) -> str:
        where = f"{self.obj}: {self.path}" if self.path else self.obj
        return f"{where}: {self.message}"


class _Report:
    def __init__(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace")
        name = meta.get("name", "?")
        self.where = (
            f"{obj.get('kind', '?')} {ns}/{name}" if ns else f"{obj.get('kind', '?')} {name}"
        )
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.where, path, message))

    def enum(self, path: str, value: Any, allowed: Sequence[str]) -> None:
        if value is not None and value not in allowed:
            self.add(path, f"{value!r} is not one of {', '.join(allowed)}")

    def quantity(self, path: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.add(path, f"{value!r} is not a quantity")
            return
        try:
            parse(str(value))
        except InvalidInput as exc:
            self.add(path, exc.message)

    def quantities(self, path: str, values: Any) -> None:
        if not values:
            return
        if not isinstance(values, Mapping):
            self.add(path, "expected a map of resource name to quantity")
            return
        for key, value in values.items():
            self.quantity(f"{path}.{key}", value)


def check_manifest(obj: Mapping[str, Any]) -> list[Problem]:
    """The problems of one manifest on its own (names, labels, enums, quantities, PSA)."""
    report = _Report(obj)
    _check_metadata(report, obj)
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Namespace":
        _check_namespace(report, obj)
    elif kind == "Pod":
        _check_pod_spec(report, spec, "spec", agent=True)
    elif kind in _WORKLOAD_KINDS:
        template = (spec.get("template") or {}).get("spec") or {}
        _check_pod_spec(report, template, "spec.template.spec", agent=False)
    elif kind == "ResourceQuota":
        report.quantities("spec.hard", spec.get("hard"))
    elif kind == "LimitRange":
        for i, item in enumerate(spec.get("limits") or []):
            base = f"spec.limits[{i}]"
            report.enum(f"{base}.type", item.get("type"), _LIMIT_TYPES)
            for field in ("default", "defaultRequest", "max", "min", "maxLimitRequestRatio"):
                report.quantities(f"{base}.{field}", item.get(field))
    elif kind == "PersistentVolumeClaim":
        for i, mode in enumerate(spec.get("accessModes") or []):
            report.enum(f"spec.accessModes[{i}]", mode, _ACCESS_MODES)
        report.enum("spec.volumeMode", spec.get("volumeMode"), _VOLUME_MODES)
        resources = spec.get("resources") or {}
        report.quantities("spec.resources.requests", resources.get("requests"))
        report.quantities("spec.resources.limits", resources.get("limits"))
        if "storage" not in (resources.get("requests") or {}):
            report.add("spec.resources.requests.storage", "a claim must request storage")
    elif kind == "NetworkPolicy":
        _check_network_policy(report, spec)
    elif kind in ("Role", "ClusterRole"):
        _check_rules(report, obj.get("rules") or [])
    elif kind in ("RoleBinding", "ClusterRoleBinding"):
        ref = obj.get("roleRef") or {}
        report.enum("roleRef.kind", ref.get("kind"), _ROLE_REF_KINDS)
        for i, subject in enumerate(obj.get("subjects") or []):
            report.enum(f"subjects[{i}].kind", subject.get("kind"), _SUBJECT_KINDS)
    elif (
        kind == "ServiceAccount"
        and str((obj.get("metadata") or {}).get("namespace", "")).startswith("org-")
        and obj.get("automountServiceAccountToken") is not False
    ):
        report.add("automountServiceAccountToken", "must be false: agents get no API token")
    return report.problems


def check_manifests(
    manifests: Iterable[Mapping[str, Any]], *, nats_port: int = 4222
) -> list[Problem]:
    """The problems of every manifest, plus those of the set as a whole.

    For every Namespace in the set, the set must hold the three NetworkPolicies that isolate
    it (default deny of ingress and egress, DNS egress to kube-dns, TCP egress to NATS on
    ``nats_port``) and no policy that lets anything in.
    """
    objs = list(manifests)
    problems: list[Problem] = []
    for obj in objs:
        problems.extend(check_manifest(obj))
    for ns in (o for o in objs if o.get("kind") == "Namespace"):
        name = (ns.get("metadata") or {}).get("name")
        policies = [
            o
            for o in objs
            if o.get("kind") == "NetworkPolicy"
            and (o.get("metadata") or {}).get("namespace") == name
        ]
        problems.extend(_check_isolation(ns, policies, nats_port))
    return problems


def _check_metadata(report: _Report, obj: Mapping[str, Any]) -> None:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if obj.get("kind") in _LABEL_NAMED_KINDS:
        if not is_dns1123_label(name):
            report.add("metadata.name", f"{name!r} is not a DNS-1123 label")
    elif not is_dns1123_subdomain(name):
        report.add("metadata.name", f"{name!r} is not a DNS-1123 subdomain")
    ns = meta.get("namespace")
    if ns is not None and not is_dns1123_label(ns):
        report.add("metadata.namespace", f"{ns!r} is not a DNS-1123 label")
    for key, value in (meta.get("labels") or {}).items():
        if not is_label_key(key):
            report.add(f"metadata.labels.{key}", "invalid label key")
        if not is_label_value(value):
            report.add(f"metadata.labels.{key}", f"invalid label value {value!r}")
    for key in meta.get("annotations") or {}:
        if not is_label_key(key):
            report.add(f"metadata.annotations.{key}", "invalid annotation key")


def _check_namespace(report: _Report, obj: Mapping[str, Any]) -> None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for mode in _PSA_MODES:
        key = f"pod-security.kubernetes.io/{mode}"
        value = labels.get(key)
        report.enum(f"metadata.labels.{key}", value, _PSA_LEVELS)
        if value != "restricted":
            report.add(f"metadata.labels.{key}", "an organization's namespace must be 'restricted'")
    if "tenant" not in labels:
        report.add("metadata.labels.tenant", "missing: the namespace must name its tenant")


def _check_pod_spec(report: _Report, spec: Mapping[str, Any], base: str, *, agent: bool) -> None:
    """Enums, quantities, and the Pod Security ``restricted`` profile; for an agent's pod also
    Corral's hardening (no API token: agents never talk to the API server)."""
    report.enum(f"{base}.restartPolicy", spec.get("restartPolicy"), _RESTART_POLICIES)
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            report.add(f"{base}.{flag}", "not allowed by Pod Security 'restricted'")
    if agent and spec.get("automountServiceAccountToken") is not False:
        report.add(f"{base}.automountServiceAccountToken", "must be false")
    if spec.get("enableServiceLinks") is not False:
        report.add(f"{base}.enableServiceLinks", "must be false")
    pod_sc = spec.get("securityContext") or {}
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    report.enum(f"{base}.securityContext.seccompProfile.type", pod_seccomp, _SECCOMP_TYPES)
    if pod_sc.get("runAsUser") == 0:
        report.add(f"{base}.securityContext.runAsUser", "must not be 0 (root)")
    for i, volume in enumerate(spec.get("volumes") or []):
        kinds = set(volume) - _VOLUME_META_KEYS
        bad = sorted(kinds - _RESTRICTED_VOLUMES)
        if bad:
            report.add(f"{base}.volumes[{i}]", f"volume type {bad[0]} not allowed by 'restricted'")
        size_limit = (volume.get("emptyDir") or {}).get("sizeLimit")
        if size_limit is not None:
            report.quantity(f"{base}.volumes[{i}].emptyDir.sizeLimit", size_limit)
    containers = [("containers", c) for c in spec.get("containers") or []]
    containers += [("initContainers", c) for c in spec.get("initContainers") or []]
    if not spec.get("containers"):
        report.add(f"{base}.containers", "a pod needs at least one container")
    counters: dict[str, int] = {}
    for group, container in containers:
        i = counters.get(group, 0)
        counters[group] = i + 1
        _check_container(report, container, f"{base}.{group}[{i}]", pod_sc, pod_seccomp)


def _check_container(
    report: _Report,
    container: Mapping[str, Any],
    path: str,
    pod_sc: Mapping[str, Any],
    pod_seccomp: Any,
) -> None:
    report.enum(f"{path}.imagePullPolicy", container.get("imagePullPolicy"), _IMAGE_PULL_POLICIES)
    resources = container.get("resources") or {}
    report.quantities(f"{path}.resources.requests", resources.get("requests"))
    report.quantities(f"{path}.resources.limits", resources.get("limits"))
    for j, port in enumerate(container.get("ports") or []):
        report.enum(f"{path}.ports[{j}].protocol", port.get("protocol"), _PROTOCOLS)
        if port.get("hostPort"):
            report.add(f"{path}.ports[{j}].hostPort", "not allowed by 'restricted'")
    sc = container.get("securityContext") or {}
    sc_path = f"{path}.securityContext"
    if sc.get("privileged"):
        report.add(f"{sc_path}.privileged", "not allowed by 'restricted'")
    if sc.get("allowPrivilegeEscalation") is not False:
        report.add(f"{sc_path}.allowPrivilegeEscalation", "must be false ('restricted')")
    run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    if run_as_non_root is not True:
        report.add(f"{sc_path}.runAsNonRoot", "must be true, here or on the pod ('restricted')")
    if sc.get("runAsUser") == 0:
        report.add(f"{sc_path}.runAsUser", "must not be 0 (root)")
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    report.enum(f"{sc_path}.seccompProfile.type", seccomp, _SECCOMP_TYPES)
    effective = seccomp if seccomp is not None else pod_seccomp
    if effective not in ("RuntimeDefault", "Localhost"):
        report.add(
            f"{sc_path}.seccompProfile.type",
            "must be RuntimeDefault or Localhost, here or on the pod ('restricted')",
        )
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        report.add(f"{sc_path}.capabilities.drop", "must drop ALL ('restricted')")
    extra = [c for c in caps.get("add") or [] if c != "NET_BIND_SERVICE"]
    if extra:
        report.add(f"{sc_path}.capabilities.add", f"{extra[0]} not allowed by 'restricted'")
    if sc.get("readOnlyRootFilesystem") is not True:
        report.add(f"{sc_path}.readOnlyRootFilesystem", "must be true")


def _check_network_policy(report: _Report, spec: Mapping[str, Any]) -> None:
    for i, policy_type in enumerate(spec.get("policyTypes") or []):
        report.enum(f"spec.policyTypes[{i}]", policy_type, _POLICY_TYPES)
    for direction in ("ingress", "egress"):
        for i, rule in enumerate(spec.get(direction) or []):
            for j, port in enumerate(rule.get("ports") or []):
                report.enum(
                    f"spec.{direction}[{i}].ports[{j}].protocol", port.get("protocol"), _PROTOCOLS
                )
            peers = rule.get("from" if direction == "ingress" else "to") or []
            if not peers:
                report.add(f"spec.{direction}[{i}]", "a rule without peers admits every address")
            for j, peer in enumerate(peers):
                if peer.get("namespaceSelector") == {}:
                    report.add(
                        f"spec.{direction}[{i}].peers[{j}].namespaceSelector",
                        "an empty namespaceSelector admits every namespace",
                    )


def _check_rules(report: _Report, rules: Sequence[Mapping[str, Any]]) -> None:
    for i, rule in enumerate(rules):
        for j, verb in enumerate(rule.get("verbs") or []):
            report.enum(f"rules[{i}].verbs[{j}]", verb, _RBAC_VERBS)
        reads = _READ_VERBS & set(rule.get("verbs") or [])
        if "secrets" in (rule.get("resources") or []) and reads and not rule.get("resourceNames"):
            report.add(f"rules[{i}].resourceNames", "empty: the rule reads every secret")
        for j, name in enumerate(rule.get("resourceNames") or []):
            if any(c in name for c in "*?["):
                report.add(
                    f"rules[{i}].resourceNames[{j}]",
                    f"{name!r}: RBAC resourceNames are exact names, not globs",
                )


def _egress_ports(policy: Mapping[str, Any]) -> set[tuple[str, int]]:
    ports: set[tuple[str, int]] = set()
    for rule in (policy.get("spec") or {}).get("egress") or []:
        for port in rule.get("ports") or []:
            if isinstance(port.get("port"), int):
                ports.add((port.get("protocol", "TCP"), port["port"]))
    return ports


def _check_isolation(
    ns: Mapping[str, Any], policies: Sequence[Mapping[str, Any]], nats_port: int
) -> list[Problem]:
    report = _Report(ns)
    deny = dns = nats = False
    for policy in policies:
        spec = policy.get("spec") or {}
        everyone = spec.get("podSelector") == {}
        types = set(spec.get("policyTypes") or [])
        if spec.get("ingress"):
            report.add("", f"NetworkPolicy {policy['metadata'].get('name')} admits ingress")
        if everyone and types >= {"Ingress", "Egress"} and not spec.get("egress"):
            deny = True
        ports = _egress_ports(policy)
        if everyone and {("UDP", 53), ("TCP", 53)} <= ports:
            dns = True
        if everyone and ("TCP", nats_port) in ports:
            nats = True
    if not deny:
        report.add("", "missing NetworkPolicy: default deny of ingress and egress for every pod")
    if not dns:
        report.add("", "missing NetworkPolicy: DNS egress (53/UDP and 53/TCP)")
    if not nats:
        report.add("", f"missing NetworkPolicy: TCP egress to NATS on port {nats_port}")
    return report.problems
