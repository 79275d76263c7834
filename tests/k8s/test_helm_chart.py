"""The control plane's Helm chart: consistent with itself and with what the runtime does.

Rendering needs the ``helm`` binary; where it is on ``PATH`` the rendered manifests are linted
and validated like Corral's own, otherwise those tests skip and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from corral.domain.grants import SecretGrant
from corral.runtime.kubernetes import KubernetesRuntime
from tests.k8s.checks import check_manifests
from tests.k8s.factories import make_org, make_spec
from tests.k8s.fake import FakeGateway
from tests.support import eventually

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "corral"
TEMPLATES = CHART / "templates"

RESOURCES = {
    "Namespace": ("", "namespaces"),
    "Pod": ("", "pods"),
    "PersistentVolumeClaim": ("", "persistentvolumeclaims"),
    "Secret": ("", "secrets"),
    "ServiceAccount": ("", "serviceaccounts"),
    "ResourceQuota": ("", "resourcequotas"),
    "LimitRange": ("", "limitranges"),
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
    "Role": ("rbac.authorization.k8s.io", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
}
# What each gateway call asks of the API server (a server-side apply of a new object is a
# create as well as a patch).
VERBS = {
    "apply": ("patch", "create"),
    "create": ("create",),
    "get": ("get",),
    "delete": ("delete",),
    "annotate": ("patch",),
    "list": ("list",),
    "watch": ("watch",),
}


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def cluster_role_rules() -> list[dict[str, Any]]:
    """The ClusterRole's rules, which the template writes as plain YAML."""
    text = (TEMPLATES / "rbac.yaml").read_text()
    block = text.split("\nrules:\n", 1)[1].split("\n---", 1)[0]
    rules: list[dict[str, Any]] = yaml.safe_load("rules:\n" + block)["rules"]
    return rules


def granted(group: str, resource: str, verb: str, name: str | None = None) -> bool:
    return any(
        group in rule["apiGroups"]
        and resource in rule["resources"]
        and verb in rule["verbs"]
        and (not rule.get("resourceNames") or name in rule["resourceNames"])
        for rule in cluster_role_rules()
    )


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "corral"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])


def test_every_value_a_template_uses_is_declared() -> None:
    declared = values()
    missing = []
    for template in TEMPLATES.iterdir():
        for path in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", template.read_text()):
            node: Any = declared
            for key in path.split("."):
                if not isinstance(node, dict) or key not in node:
                    missing.append(f"{template.name}: .Values.{path}")
                    break
                node = node[key]
    assert missing == []


def test_the_deployment_runs_the_control_plane_on_kubernetes() -> None:
    text = (TEMPLATES / "deployment.yaml").read_text()
    command = re.search(r"command:\n((?:\s+- .+\n)+)", text)
    assert command is not None
    argv = [line.strip()[2:] for line in command.group(1).splitlines()]
    assert argv[:4] == ["corral", "up", "--runtime", "kubernetes"]
    for env in ("CORRAL_DATABASE_URL", "CORRAL_NATS_URL", "CORRAL_NATS_OPERATOR_SEED"):
        assert f"name: {env}" in text


def test_the_cluster_role_never_reads_secrets() -> None:
    for verb in ("get", "list", "watch"):
        assert not granted("", "secrets", verb)
    assert not any(
        "*" in rule["verbs"] or "*" in rule["resources"] for rule in cluster_role_rules()
    )


async def test_the_cluster_role_grants_every_call_the_runtime_makes() -> None:
    """Drive a whole lifecycle through the fake and check each call against the ClusterRole."""
    fake = FakeGateway(linger=0.01)
    rt = KubernetesRuntime(fake, poll_interval=0.002)
    org = make_org()
    await rt.ensure_org(org, grants=[SecretGrant("github-token")], secrets={"github-token": b"x"})
    spec = make_spec(org)
    await rt.start(spec)
    await rt.status(org.slug, spec.agent_id)
    await rt.logs(org.slug, spec.agent_id)
    await rt.list_agents()
    exits = rt.exits()
    watching = asyncio.ensure_future(anext(exits))
    await eventually(lambda: any(call[0] == "watch" for call in fake.calls), timeout=2)
    watching.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watching
    await exits.aclose()  # type: ignore[attr-defined]
    await rt.quota_status(org.slug)
    await rt.stop(org.slug, spec.agent_id)
    await rt.delete_workspace(org.slug, spec.agent_id)
    await rt.delete_secret(org.slug, "github-token")
    await rt.remove_org(org.slug)
    await rt.close()
    needed: set[tuple[str, str, str]] = set()
    for call, kind, _, _ in fake.calls:
        group, resource = RESOURCES[kind]
        if call == "logs":
            needed.add((group, "pods/log", "get"))
            continue
        needed.update((group, resource, verb) for verb in VERBS[call])
    assert {c[0] for c in fake.calls} >= {
        "apply",
        "create",
        "get",
        "delete",
        "annotate",
        "list",
        "watch",
    }
    missing = sorted(n for n in needed if not granted(*n))
    assert missing == []
    # writing the secret-reader Role needs escalate and bind on that one Role
    assert granted("rbac.authorization.k8s.io", "roles", "escalate", "agent-secret-reader")
    assert granted("rbac.authorization.k8s.io", "roles", "bind", "agent-secret-reader")


HELM = shutil.which("helm")
needs_helm = pytest.mark.skipif(
    HELM is None, reason="helm is not on PATH: the chart is not rendered here"
)
SET = [
    "--set",
    "database.url=postgresql+asyncpg://corral:pw@pg-postgresql.db:5432/corral",
    "--set",
    "credentials.natsOperatorSeed=SOAEXAMPLE",
    "--set",
    "credentials.natsSystemSeed=seed",
    "--set",
    "credentials.masterKey=key",
]


def helm(*args: str) -> str:
    assert HELM is not None
    done = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_helm
def test_helm_lint_passes() -> None:
    helm("lint", "--strict", str(CHART), *SET)


@needs_helm
@pytest.mark.parametrize(
    "version", ["1.30", kubernetes_validate.latest_version().rsplit(".", 1)[0]]
)
def test_the_rendered_chart_validates_and_passes_the_project_checks(version: str) -> None:
    out = helm(
        "template",
        "corral",
        str(CHART),
        "--namespace",
        "corral",
        "--kube-version",
        f"{version}.0",
        *SET,
    )
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert {d["kind"] for d in docs} >= {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    assert check_manifests(docs) == []


@needs_helm
def test_the_admission_policy_refuses_clusters_older_than_1_30() -> None:
    assert HELM is not None
    args = ["template", "corral", str(CHART), "--kube-version", "1.29.0", *SET]
    done = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "1.30" in done.stderr
    helm(*args, "--set", "rbac.admissionPolicy.enabled=false")


def test_runtime_classes_per_plan_reach_the_control_plane_as_its_settings_read_them() -> None:
    from corral.settings import Settings

    assert values()["corral"]["kubernetes"]["runtimeClasses"] == {}  # the nodes' default
    deployment = (TEMPLATES / "deployment.yaml").read_text()
    assert "CORRAL_K8S_RUNTIME_CLASSES" in deployment
    assert 'include "corral.runtimeClasses"' in deployment
    helper = (TEMPLATES / "_helpers.tpl").read_text()
    assert 'define "corral.runtimeClasses"' in helper and 'printf "%s=%s"' in helper
    parsed = Settings(k8s_runtime_classes="free=gvisor,*=kata")
    assert parsed.k8s_runtime_classes == {"free": "gvisor", "*": "kata"}
