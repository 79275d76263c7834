"""What goes over the wire: the lightkube gateway's HTTP exchanges, against a mock transport.

No API server answers here; these tests pin the requests (paths, verbs, query, content type,
bodies) and the translation of the server's answers into Corral's error tree.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx2
import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User

from corral.domain.errors import (
    Conflict,
    CorralError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Unavailable,
)
from corral.domain.grants import SecretGrant
from corral.runtime.base import Phase
from corral.runtime.kubernetes import KubernetesRuntime
from corral.runtime.kubernetes import manifests as m
from corral.runtime.kubernetes.gateway import LightkubeGateway, error_for_status
from tests.k8s.factories import make_org, make_spec

APPLY = "application/apply-patch+yaml"


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any


@dataclass
class Server:
    """Answers with ``respond`` and records every request."""

    respond: Callable[[Seen], httpx2.Response]
    seen: list[Seen] = field(default_factory=list)

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content) if request.content else None
        seen = Seen(
            request.method,
            request.url.path,
            parse_qs(
                request.url.query.decode()
                if isinstance(request.url.query, bytes)
                else request.url.query
            ),
            request.headers.get("content-type"),
            body,
        )
        self.seen.append(seen)
        return self.respond(seen)


def echo(seen: Seen) -> httpx2.Response:
    """A server that creates whatever it is sent and finds nothing."""
    if seen.method in ("PATCH", "POST"):
        body = dict(seen.body)
        body["metadata"] = {**body["metadata"], "uid": "uid-1", "resourceVersion": "1"}
        if body["kind"] == "Pod":
            body["status"] = {"phase": "Pending"}
        return httpx2.Response(201 if seen.method == "POST" else 200, json=body)
    if seen.method == "DELETE":
        return httpx2.Response(
            200, json={"kind": "Status", "apiVersion": "v1", "status": "Success"}
        )
    return httpx2.Response(404, json=status_body(404, "NotFound", "not found"))


@pytest.fixture
def server() -> Server:
    return Server(echo)


@pytest.fixture
async def gateway(server: Server) -> AsyncIterator[LightkubeGateway]:
    config = KubeConfig.from_one(cluster=Cluster(server="https://k8s.test"), user=User(token="t"))
    client = AsyncClient(config=config, transport=httpx2.MockTransport(server))
    gw = LightkubeGateway(client)
    yield gw
    await gw.close()


async def test_ensure_org_applies_every_object_server_side_as_corral_with_force(
    gateway: LightkubeGateway, server: Server
) -> None:
    org = make_org()
    grants = [SecretGrant("github-token")]
    secrets = {"github-token": b"ghp_x"}
    await KubernetesRuntime(gateway).ensure_org(org, grants=grants, secrets=secrets)
    expected = m.org_manifests(org, grants=grants, secrets=secrets)
    assert [s.body for s in server.seen] == expected
    for s in server.seen:
        assert s.method == "PATCH"
        assert s.content_type == APPLY
        assert s.query["fieldManager"] == ["corral"]
        assert s.query["force"] == ["true"]
    assert [s.path for s in server.seen] == [
        "/api/v1/namespaces/org-acme-corp",
        "/api/v1/namespaces/org-acme-corp/resourcequotas/tenant-quota",
        "/api/v1/namespaces/org-acme-corp/limitranges/agent-limits",
        "/apis/networking.k8s.io/v1/namespaces/org-acme-corp/networkpolicies/default-deny-all",
        "/apis/networking.k8s.io/v1/namespaces/org-acme-corp/networkpolicies/allow-dns",
        "/apis/networking.k8s.io/v1/namespaces/org-acme-corp/networkpolicies/allow-nats",
        "/api/v1/namespaces/org-acme-corp/serviceaccounts/agent-worker-sa",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/org-acme-corp/roles/agent-secret-reader",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/org-acme-corp/rolebindings/agent-secret-binding",
        "/api/v1/namespaces/org-acme-corp/secrets/github-token",
    ]


async def test_start_creates_the_claim_and_pod_with_post_and_applies_the_credentials(
    gateway: LightkubeGateway, server: Server
) -> None:
    spec = make_spec()
    status = await KubernetesRuntime(gateway).start(spec)
    assert status.phase is Phase.STARTING
    claim, creds, pod = m.agent_manifests(spec.org, spec)
    calls = [(s.method, s.path) for s in server.seen]
    ns = "/api/v1/namespaces/org-acme-corp"
    assert calls == [
        ("GET", f"{ns}/pods/{spec.agent_id}"),
        ("GET", f"{ns}/resourcequotas/tenant-quota"),
        ("GET", f"{ns}/persistentvolumeclaims/workspace-{spec.agent_id}"),
        ("POST", f"{ns}/persistentvolumeclaims"),
        ("PATCH", f"{ns}/secrets/nats-creds-{spec.agent_id}"),
        ("POST", f"{ns}/pods"),
    ]
    posted_claim, applied_creds, posted_pod = (server.seen[i] for i in (3, 4, 5))
    # the bodies go out exactly as built: nothing dropped on the way through lightkube
    assert posted_claim.body == claim
    assert posted_pod.body == pod
    assert posted_pod.content_type == "application/json"
    assert posted_pod.query["fieldManager"] == ["corral"]
    assert applied_creds.body == creds
    assert applied_creds.content_type == APPLY
    assert applied_creds.query["force"] == ["true"]


async def test_delete_sends_the_grace_period(gateway: LightkubeGateway, server: Server) -> None:
    await gateway.delete("Pod", "agent-1", namespace="org-acme-corp", grace_period=7)
    (seen,) = server.seen
    assert (seen.method, seen.path) == ("DELETE", "/api/v1/namespaces/org-acme-corp/pods/agent-1")
    assert seen.query["gracePeriodSeconds"] == ["7"]


async def test_deleting_a_namespace_is_cluster_scoped(
    gateway: LightkubeGateway, server: Server
) -> None:
    await gateway.delete("Namespace", "org-acme-corp")
    assert (server.seen[0].method, server.seen[0].path) == (
        "DELETE",
        "/api/v1/namespaces/org-acme-corp",
    )


def pod_json(name: str, phase: str, **status: Any) -> dict[str, Any]:
    org = make_org()
    *_, pod = m.agent_manifests(org, make_spec(org, agent_id=name))
    pod["metadata"]["uid"] = f"uid-{name}"
    pod["metadata"]["resourceVersion"] = "5"
    pod["status"] = {"phase": phase, **status}
    return pod


async def test_list_agents_lists_pods_in_every_namespace_by_corral_labels(server: Server) -> None:
    def respond(seen: Seen) -> httpx2.Response:
        items = [pod_json("agent-a", "Running"), pod_json("agent-b", "Pending")]
        return httpx2.Response(
            200,
            json={
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "9"},
                "items": items,
            },
        )

    server.respond = respond
    config = KubeConfig.from_one(cluster=Cluster(server="https://k8s.test"), user=User(token="t"))
    gw = LightkubeGateway(AsyncClient(config=config, transport=httpx2.MockTransport(server)))
    agents = await KubernetesRuntime(gw).list_agents()
    await gw.close()
    assert [(a.agent_id, a.phase) for a in agents] == [
        ("agent-a", Phase.RUNNING),
        ("agent-b", Phase.STARTING),
    ]
    (seen,) = server.seen
    assert (seen.method, seen.path) == ("GET", "/api/v1/pods")
    assert seen.query["labelSelector"] == ["managed-by=corral,corral.dev/component=agent"]


async def test_exits_come_from_a_pod_watch(server: Server) -> None:
    crashed = pod_json(
        "agent-a",
        "Failed",
        containerStatuses=[
            {
                "name": "agent",
                "image": "x",
                "ready": False,
                "restartCount": 0,
                "imageID": "",
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
            }
        ],
    )

    def respond(seen: Seen) -> httpx2.Response:
        lines = [json.dumps({"type": "ADDED", "object": pod_json("agent-b", "Running")})]
        lines.append(json.dumps({"type": "MODIFIED", "object": crashed}))
        return httpx2.Response(200, content=("\n".join(lines) + "\n").encode())

    server.respond = respond
    config = KubeConfig.from_one(cluster=Cluster(server="https://k8s.test"), user=User(token="t"))
    gw = LightkubeGateway(AsyncClient(config=config, transport=httpx2.MockTransport(server)))
    exits = KubernetesRuntime(gw).exits()
    end = await anext(exits)
    await exits.aclose()  # type: ignore[attr-defined]
    await gw.close()
    assert (end.agent_id, end.phase, end.exit_code) == ("agent-a", Phase.CRASHED, 137)
    assert end.detail["reason"] == "OOMKilled"
    seen = server.seen[0]
    assert (seen.method, seen.path) == ("GET", "/api/v1/pods")
    assert seen.query["watch"] == ["true"]
    assert seen.query["labelSelector"] == ["managed-by=corral,corral.dev/component=agent"]


async def test_logs_ask_for_the_tail(server: Server) -> None:
    server.respond = lambda seen: httpx2.Response(200, text="one\ntwo\n")
    config = KubeConfig.from_one(cluster=Cluster(server="https://k8s.test"), user=User(token="t"))
    gw = LightkubeGateway(AsyncClient(config=config, transport=httpx2.MockTransport(server)))
    text = await KubernetesRuntime(gw).logs("acme-corp", "agent-a", tail=50)
    await gw.close()
    assert text == "one\ntwo\n"
    seen = server.seen[0]
    assert seen.path == "/api/v1/namespaces/org-acme-corp/pods/agent-a/log"
    assert seen.query["tailLines"] == ["50"]


@pytest.mark.parametrize(
    ("code", "reason", "message", "error"),
    [
        (404, "NotFound", 'pods "agent-a" not found', NotFound),
        (409, "AlreadyExists", 'pods "agent-a" already exists', Conflict),
        (409, "Conflict", "Apply failed with 1 conflict", Conflict),
        (403, "Forbidden", 'pods is forbidden: User "x" cannot create resource', PermissionDenied),
        (
            403,
            "Forbidden",
            "pods is forbidden: exceeded quota: tenant-quota, requested: pods=1, used: pods=15, limited: pods=15",
            QuotaExceeded,
        ),
        (
            422,
            "Invalid",
            'Pod "agent-a" is invalid: spec.containers[0].image: Required value',
            InvalidInput,
        ),
        (400, "BadRequest", "bad request", InvalidInput),
        (401, "Unauthorized", "Unauthorized", Unavailable),
        (429, "TooManyRequests", "slow down", Unavailable),
        (500, "InternalError", "etcd is down", Unavailable),
        (
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
            Unavailable,
        ),
    ],
)
async def test_api_errors_are_translated_with_their_cause(
    server: Server, code: int, reason: str, message: str, error: type[CorralError]
) -> None:
    server.respond = lambda seen: httpx2.Response(code, json=status_body(code, reason, message))
    config = KubeConfig.from_one(cluster=Cluster(server="https://k8s.test"), user=User(token="t"))
    gw = LightkubeGateway(AsyncClient(config=config, transport=httpx2.MockTransport(server)))
    with pytest.raises(error) as caught:
        await gw.create(m.agent_manifests("acme-corp", make_spec())[2])
    await gw.close()
    assert type(caught.value) is error
    assert isinstance(caught.value.__cause__, ApiError)
    assert caught.value.details["status"] == code
    assert caught.value.details["kind"] == "Pod"
    assert message in caught.value.message


async def test_an_unreachable_server_is_unavailable(server: Server) -> None:
    def refuse(seen: Seen) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused")

    server.respond = refuse
    config = KubeConfig.from_one(cluster=Cluster(server="https://k8s.test"), user=User(token="t"))
    gw = LightkubeGateway(AsyncClient(config=config, transport=httpx2.MockTransport(server)))
    with pytest.raises(Unavailable) as caught:
        await gw.get("Pod", "agent-a", namespace="org-acme-corp")
    await gw.close()
    assert isinstance(caught.value.__cause__, httpx2.ConnectError)


async def test_a_non_json_gateway_error_is_unavailable(server: Server) -> None:
    server.respond = lambda seen: httpx2.Response(502, text="Bad Gateway")
    config = KubeConfig.from_one(cluster=Cluster(server="https://k8s.test"), user=User(token="t"))
    gw = LightkubeGateway(AsyncClient(config=config, transport=httpx2.MockTransport(server)))
    with pytest.raises(Unavailable) as caught:
        await gw.get("Pod", "agent-a", namespace="org-acme-corp")
    await gw.close()
    assert caught.value.details["status"] == 502


def test_error_for_status_keeps_quota_refusals_apart_from_rbac_refusals() -> None:
    assert type(error_for_status(403, "exceeded quota: tenant-quota")) is QuotaExceeded
    assert type(error_for_status(403, "cannot get resource")) is PermissionDenied


async def test_a_kind_corral_does_not_manage_is_refused(gateway: LightkubeGateway) -> None:
    with pytest.raises(InvalidInput, match="Deployment"):
        await gateway.get("Deployment", "x", namespace="org-acme-corp")


async def test_stop_marks_deletes_and_waits_for_the_pod_over_http(server: Server) -> None:
    gone = False

    def respond(seen: Seen) -> httpx2.Response:
        nonlocal gone
        if seen.method == "GET" and seen.path.endswith("/pods/agent-a"):
            if gone:
                return httpx2.Response(404, json=status_body(404, "NotFound", "not found"))
            return httpx2.Response(200, json=pod_json("agent-a", "Running"))
        if seen.method == "PATCH":
            return httpx2.Response(200, json=pod_json("agent-a", "Running"))
        if seen.method == "DELETE" and "/pods/" in seen.path:
            gone = True
        return httpx2.Response(
            200, json={"kind": "Status", "apiVersion": "v1", "status": "Success"}
        )

    server.respond = respond
    config = KubeConfig.from_one(cluster=Cluster(server="https://k8s.test"), user=User(token="t"))
    gw = LightkubeGateway(AsyncClient(config=config, transport=httpx2.MockTransport(server)))
    await KubernetesRuntime(gw, poll_interval=0.001).stop("acme-corp", "agent-a", grace=2.5)
    await gw.close()
    ns = "/api/v1/namespaces/org-acme-corp"
    assert [(s.method, s.path) for s in server.seen] == [
        ("GET", f"{ns}/pods/agent-a"),
        ("PATCH", f"{ns}/pods/agent-a"),
        ("DELETE", f"{ns}/pods/agent-a"),
        ("GET", f"{ns}/pods/agent-a"),
        ("DELETE", f"{ns}/secrets/nats-creds-agent-a"),
    ]
    mark, delete = server.seen[1], server.seen[2]
    assert mark.content_type == "application/merge-patch+json"
    assert list(mark.body) == ["metadata"]
    assert list(mark.body["metadata"]["annotations"]) == ["corral.dev/stop-requested"]
    assert mark.query["fieldManager"] == ["corral"]
    assert "force" not in mark.query
    assert delete.query["gracePeriodSeconds"] == ["3"]
