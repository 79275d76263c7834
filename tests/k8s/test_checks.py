"""The project checks catch what the JSON schemas let through."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest

from corral.domain.grants import SecretGrant
from corral.domain.tenancy import is_dns1123_label
from corral.runtime.kubernetes import manifests as m
from corral.runtime.kubernetes.names import is_dns1123_subdomain, is_label_key, is_label_value
from tests.k8s.checks import Problem, check_manifest, check_manifests
from tests.k8s.factories import make_org, make_spec

Objs = list[dict[str, Any]]


def good_set() -> Objs:
    org = make_org()
    objs = m.org_manifests(
        org, grants=[SecretGrant("github-token")], secrets={"github-token": b"x"}
    )
    return objs + m.agent_manifests(org, make_spec(org))


def find(objs: Objs, kind: str, name: str | None = None) -> dict[str, Any]:
    return next(
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    )


def container(objs: Objs) -> dict[str, Any]:
    container: dict[str, Any] = find(objs, "Pod")["spec"]["containers"][0]
    return container


def set_pull_policy(objs: Objs) -> None:
    container(objs)["imagePullPolicy"] = "Sometimes"


def set_restart_policy(objs: Objs) -> None:
    find(objs, "Pod")["spec"]["restartPolicy"] = "Sometimes"


def set_protocol(objs: Objs) -> None:
    find(objs, "NetworkPolicy", "allow-nats")["spec"]["egress"][0]["ports"][0]["protocol"] = "tcp"


def set_policy_type(objs: Objs) -> None:
    find(objs, "NetworkPolicy", "default-deny-all")["spec"]["policyTypes"] = ["Ingress", "Outgoing"]


def set_access_mode(objs: Objs) -> None:
    find(objs, "PersistentVolumeClaim")["spec"]["accessModes"] = ["ReadWriteSometimes"]


def set_seccomp(objs: Objs) -> None:
    find(objs, "Pod")["spec"]["securityContext"]["seccompProfile"]["type"] = "Default"


def set_container_quantity(objs: Objs) -> None:
    container(objs)["resources"]["limits"]["memory"] = "1 gigabyte"


def set_quota_quantity(objs: Objs) -> None:
    find(objs, "ResourceQuota")["spec"]["hard"]["requests.cpu"] = "ten"


def set_limit_range_quantity(objs: Objs) -> None:
    find(objs, "LimitRange")["spec"]["limits"][0]["max"]["cpu"] = "4 cores"


def set_storage_quantity(objs: Objs) -> None:
    find(objs, "PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"] = "-10Gi"


def set_pod_name(objs: Objs) -> None:
    find(objs, "Pod")["metadata"]["name"] = "Agent_One"


def set_namespace_name(objs: Objs) -> None:
    find(objs, "Namespace")["metadata"]["name"] = "org.acme"


def set_label_value(objs: Objs) -> None:
    find(objs, "Pod")["metadata"]["labels"]["corral.dev/role"] = "senior developer"


def drop_run_as_non_root(objs: Objs) -> None:
    pod = find(objs, "Pod")
    del pod["spec"]["securityContext"]["runAsNonRoot"]
    del pod["spec"]["containers"][0]["securityContext"]["runAsNonRoot"]


def drop_privilege_escalation(objs: Objs) -> None:
    del container(objs)["securityContext"]["allowPrivilegeEscalation"]


def drop_capabilities(objs: Objs) -> None:
    del container(objs)["securityContext"]["capabilities"]


def drop_seccomp(objs: Objs) -> None:
    pod = find(objs, "Pod")
    del pod["spec"]["securityContext"]["seccompProfile"]
    del pod["spec"]["containers"][0]["securityContext"]["seccompProfile"]


def drop_read_only_root(objs: Objs) -> None:
    del container(objs)["securityContext"]["readOnlyRootFilesystem"]


def drop_service_links(objs: Objs) -> None:
    del find(objs, "Pod")["spec"]["enableServiceLinks"]


def drop_token_automount(objs: Objs) -> None:
    del find(objs, "Pod")["spec"]["automountServiceAccountToken"]


def add_host_path(objs: Objs) -> None:
    find(objs, "Pod")["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}})


def add_privileged(objs: Objs) -> None:
    container(objs)["securityContext"]["privileged"] = True


def drop_psa_label(objs: Objs) -> None:
    del find(objs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]


def weaken_psa_label(objs: Objs) -> None:
    find(objs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/warn"] = "baseline"


def drop_deny_policy(objs: Objs) -> None:
    objs.remove(find(objs, "NetworkPolicy", "default-deny-all"))


def drop_dns_policy(objs: Objs) -> None:
    objs.remove(find(objs, "NetworkPolicy", "allow-dns"))


def drop_nats_policy(objs: Objs) -> None:
    objs.remove(find(objs, "NetworkPolicy", "allow-nats"))


def deny_only_ingress(objs: Objs) -> None:
    find(objs, "NetworkPolicy", "default-deny-all")["spec"]["policyTypes"] = ["Ingress"]


def allow_ingress_from_everywhere(objs: Objs) -> None:
    policy = find(objs, "NetworkPolicy", "allow-nats")
    policy["spec"]["ingress"] = [{"from": [{"namespaceSelector": {}}]}]
    policy["spec"]["policyTypes"] = ["Ingress", "Egress"]


def glob_in_resource_names(objs: Objs) -> None:
    find(objs, "Role")["rules"][0]["resourceNames"] = ["agent-ssh-*"]


def every_secret(objs: Objs) -> None:
    del find(objs, "Role")["rules"][0]["resourceNames"]


def token_for_service_account(objs: Objs) -> None:
    find(objs, "ServiceAccount")["automountServiceAccountToken"] = True


MUTATIONS: dict[str, tuple[Callable[[Objs], None], str]] = {
    "bad imagePullPolicy": (set_pull_policy, "imagePullPolicy"),
    "bad restartPolicy": (set_restart_policy, "restartPolicy"),
    "bad protocol": (set_protocol, "protocol"),
    "bad policyType": (set_policy_type, "policyTypes"),
    "bad access mode": (set_access_mode, "accessModes"),
    "bad seccomp type": (set_seccomp, "seccompProfile"),
    "bad container quantity": (set_container_quantity, "limits.memory"),
    "bad quota quantity": (set_quota_quantity, "hard.requests.cpu"),
    "bad limit range quantity": (set_limit_range_quantity, "max.cpu"),
    "negative storage": (set_storage_quantity, "storage"),
    "bad pod name": (set_pod_name, "metadata.name"),
    "bad namespace name": (set_namespace_name, "metadata.name"),
    "bad label value": (set_label_value, "corral.dev/role"),
    "missing runAsNonRoot": (drop_run_as_non_root, "runAsNonRoot"),
    "missing allowPrivilegeEscalation": (drop_privilege_escalation, "allowPrivilegeEscalation"),
    "missing capabilities drop": (drop_capabilities, "capabilities.drop"),
    "missing seccomp": (drop_seccomp, "seccompProfile"),
    "missing readOnlyRootFilesystem": (drop_read_only_root, "readOnlyRootFilesystem"),
    "missing enableServiceLinks": (drop_service_links, "enableServiceLinks"),
    "missing automountServiceAccountToken": (drop_token_automount, "automountServiceAccountToken"),
    "hostPath volume": (add_host_path, "hostPath"),
    "privileged": (add_privileged, "privileged"),
    "missing PSA enforce": (drop_psa_label, "enforce"),
    "weak PSA warn": (weaken_psa_label, "warn"),
    "missing default deny": (drop_deny_policy, "default deny"),
    "missing DNS policy": (drop_dns_policy, "DNS"),
    "missing NATS policy": (drop_nats_policy, "NATS"),
    "deny without egress": (deny_only_ingress, "default deny"),
    "ingress allowed": (allow_ingress_from_everywhere, "ingress"),
    "glob in resourceNames": (glob_in_resource_names, "glob"),
    "role reading every secret": (every_secret, "every secret"),
    "token on service account": (token_for_service_account, "automountServiceAccountToken"),
}


def test_the_good_set_has_no_problem() -> None:
    assert check_manifests(good_set()) == []


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_the_project_checks_catch_it(case: str) -> None:
    mutate, expected = MUTATIONS[case]
    objs = copy.deepcopy(good_set())
    mutate(objs)
    problems = check_manifests(objs)
    assert problems, f"{case} went unnoticed"
    assert any(expected in str(p) for p in problems), [str(p) for p in problems]


SCHEMA_BLIND = [
    "bad imagePullPolicy",
    "bad container quantity",
    "bad pod name",
    "missing seccomp",
    "missing NATS policy",
]


@pytest.mark.parametrize("case", SCHEMA_BLIND)
def test_the_schemas_alone_let_it_through(case: str) -> None:
    """Why the project checks exist: strict schema validation accepts each of these."""
    mutate, _ = MUTATIONS[case]
    objs = copy.deepcopy(good_set())
    mutate(objs)
    for obj in objs:
        kubernetes_validate.validate(obj, "1.37", strict=True)


def test_a_problem_names_the_object_and_the_path() -> None:
    objs = copy.deepcopy(good_set())
    set_pull_policy(objs)
    (problem,) = check_manifest(find(objs, "Pod"))
    assert isinstance(problem, Problem)
    assert problem.obj == "Pod org-acme-corp/agent-acme-corp-dev-1a2b"
    assert problem.path == "spec.containers[0].imagePullPolicy"
    assert str(problem).startswith("Pod org-acme-corp/agent-acme-corp-dev-1a2b: spec.containers[0]")


def test_the_nats_policy_must_open_the_configured_port() -> None:
    objs = m.org_manifests(make_org(), nats_port=4333)
    assert check_manifests(objs, nats_port=4333) == []
    assert any("4222" in str(p) for p in check_manifests(objs))


@pytest.mark.parametrize(
    ("check", "value", "ok"),
    [
        (is_dns1123_label, "org-acme", True),
        (is_dns1123_label, "a" * 64, False),
        (is_dns1123_label, "org.acme", False),
        (is_dns1123_subdomain, "org.acme", True),
        (is_dns1123_subdomain, "org..acme", False),
        (is_dns1123_subdomain, "", False),
        (is_label_value, "", True),
        (is_label_value, "org_abc.1", True),
        (is_label_value, "_x", False),
        (is_label_key, "corral.dev/role", True),
        (is_label_key, "Corral.dev/role", False),
        (is_label_key, "/role", False),
        (is_label_key, 5, False),
    ],
)
def test_name_rules(check: Callable[[object], bool], value: object, ok: bool) -> None:
    assert check(value) is ok
