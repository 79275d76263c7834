"""The narrow seam between the Kubernetes runtime and a Kubernetes API server.

:class:`K8sGateway` is all :mod:`corral.runtime.kubernetes` needs from a cluster: server-side
apply, create, get, annotate, delete, and listing, watching and reading the logs of pods, with
objects as plain dicts. :class:`LightkubeGateway` implements it with ``lightkube`` and
translates every failure into Corral's error tree; tests put an in-memory fake behind the same
protocol.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import httpx2
from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.core.resource_registry import resource_registry
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType

from corral.domain.errors import (
    Conflict,
    CorralError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Unavailable,
)

__all__ = [
    "API_VERSIONS",
    "FIELD_MANAGER",
    "K8sGateway",
    "LightkubeGateway",
    "error_for_status",
]

log = logging.getLogger(__name__)

#: The field manager Corral's server-side applies are recorded under.
FIELD_MANAGER = "corral"

#: The API version of every kind Corral manages, so callers can name objects by kind alone.
API_VERSIONS: Mapping[str, str] = {
    "Namespace": "v1",
    "ResourceQuota": "v1",
    "LimitRange": "v1",
    "ServiceAccount": "v1",
    "Secret": "v1",
    "PersistentVolumeClaim": "v1",
    "Pod": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
}


class K8sGateway(Protocol):
    """What the Kubernetes runtime asks of a cluster. Objects are plain dicts.

    Every method raises Corral errors only: ``NotFound`` (404), ``Conflict`` (409),
    ``PermissionDenied`` (403), ``QuotaExceeded`` (403 from a ResourceQuota), ``InvalidInput``
    (400, 422) and ``Unavailable`` (5xx, connection failures, timeouts).
    """

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply: create ``obj`` or bring it to this shape, forcing ownership."""

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create ``obj``; ``Conflict`` if it exists (even while it is being deleted)."""

    async def get(self, kind: str, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        """The object as the server holds it, with its status."""

    async def delete(
        self, kind: str, name: str, *, namespace: str | None = None, grace_period: int | None = None
    ) -> None:
        """Ask for deletion; it may take effect later (pods terminate, namespaces drain)."""

    async def annotate(
        self, kind: str, name: str, *, namespace: str | None, annotations: Mapping[str, str]
    ) -> None:
        """Add ``annotations`` to the object (a merge patch: nothing else changes)."""

    async def list_pods(
        self, *, labels: Mapping[str, str], namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Pods carrying all ``labels``, in ``namespace`` or in every namespace."""

    def watch_pods(
        self, *, labels: Mapping[str, str], namespace: str | None = None
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(ADDED|MODIFIED|DELETED, pod)`` events, starting with the pods that exist."""

    async def pod_logs(self, name: str, *, namespace: str, tail: int | None = None) -> str:
        """The last ``tail`` lines the pod's container wrote."""

    async def close(self) -> None: ...


def error_for_status(
    status: int, message: str, *, reason: str = "", details: Mapping[str, Any] | None = None
) -> CorralError:
    """The Corral error for an HTTP status from the API server."""
    info = {**(details or {}), "status": status, "reason": reason}
    text = message or reason or f"HTTP {status}"
    if status == 404:
        return NotFound(text, details=info)
    if status == 409:
        return Conflict(text, details=info)
    if status == 403:
        if "exceeded quota" in message:
            return QuotaExceeded(text, details=info)
        if "being terminated" in message:  # the org's namespace is on its way out
            return Conflict(text, details=info)
        return PermissionDenied(text, details=info)
    if status in (400, 422):
        return InvalidInput(text, details=info)
    # 401 (Corral's own credentials refused), 410, 429, 5xx: the cluster is not usable now.
    return Unavailable(f"Kubernetes API: {text}", details=info)


@contextmanager
def _translated(action: str, kind: str, name: str | None, namespace: str | None) -> Iterator[None]:
    where = {"action": action, "kind": kind, "name": name or "", "namespace": namespace or ""}
    try:
        yield
    except ApiError as exc:
        status = exc.status
        code = status.code or exc.response.status_code
        raise error_for_status(
            code, status.message or "", reason=status.reason or "", details=where
        ) from exc
    except httpx2.HTTPStatusError as exc:
        code = exc.response.status_code
        raise error_for_status(code, f"HTTP {code} on {action} {kind}", details=where) from exc
    except httpx2.HTTPError as exc:
        raise Unavailable(
            f"Kubernetes API unreachable ({action} {kind}): {exc}", details=where
        ) from exc


def _resource(kind: str) -> Any:
    try:
        return resource_registry.load(API_VERSIONS[kind], kind)
    except KeyError:
        raise InvalidInput(f"Corral does not manage objects of kind {kind!r}") from None


def _as_dict(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = obj.to_dict()
    return data


class LightkubeGateway:
    """:class:`K8sGateway` over a ``lightkube.AsyncClient``.

    Applies are server-side with field manager ``corral`` and ``force=True``: Corral owns the
    objects it declares, and a conflicting manager's fields are taken back rather than left to
    fail every reconcile. Bodies are sent as the builders made them; they are never round-tripped
    through lightkube's models, which drop fields they do not know.
    """

    def __init__(self, client: AsyncClient, *, field_manager: str = FIELD_MANAGER) -> None:
        self._client = client
        self._field_manager = field_manager

    @classmethod
    def from_kubeconfig(
        cls, path: str | None = None, *, context: str | None = None
    ) -> LightkubeGateway:
        """A gateway from a kubeconfig file, or (``path=None``) from the in-cluster service
        account, ``KUBECONFIG`` or ``~/.kube/config``, in that order."""
        config = KubeConfig.from_file(path).get(context) if path else None
        return cls(AsyncClient(config=config))

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind, name, namespace = _identity(obj)
        with _translated("apply", kind, name, namespace):
            result = await self._client.patch(
                _resource(kind),
                name,
                dict(obj),
                namespace=namespace,
                patch_type=PatchType.APPLY,
                field_manager=self._field_manager,
                force=True,
            )
        return _as_dict(result)

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind, name, namespace = _identity(obj)
        _resource(kind)
        with _translated("create", kind, name, namespace):
            result = await self._client.create(
                from_dict(dict(obj)), field_manager=self._field_manager
            )
        return _as_dict(result)

    async def get(self, kind: str, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        with _translated("get", kind, name, namespace):
            result = await self._client.get(_resource(kind), name, namespace=namespace)
        return _as_dict(result)

    async def delete(
        self, kind: str, name: str, *, namespace: str | None = None, grace_period: int | None = None
    ) -> None:
        with _translated("delete", kind, name, namespace):
            await self._client.delete(
                _resource(kind), name, namespace=namespace, grace_period=grace_period
            )

    async def annotate(
        self, kind: str, name: str, *, namespace: str | None, annotations: Mapping[str, str]
    ) -> None:
        with _translated("annotate", kind, name, namespace):
            await self._client.patch(
                _resource(kind),
                name,
                {"metadata": {"annotations": dict(annotations)}},
                namespace=namespace,
                patch_type=PatchType.MERGE,
                field_manager=self._field_manager,
            )

    async def list_pods(
        self, *, labels: Mapping[str, str], namespace: str | None = None
    ) -> list[dict[str, Any]]:
        with _translated("list", "Pod", None, namespace):
            return [
                _as_dict(pod)
                async for pod in self._client.list(
                    Pod, namespace=namespace or ALL_NS, labels=dict(labels)
                )
            ]

    async def watch_pods(
        self, *, labels: Mapping[str, str], namespace: str | None = None
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        with _translated("watch", "Pod", None, namespace):
            async for event, pod in self._client.watch(
                Pod, namespace=namespace or ALL_NS, labels=dict(labels)
            ):
                yield event, _as_dict(pod)

    async def pod_logs(self, name: str, *, namespace: str, tail: int | None = None) -> str:
        with _translated("logs", "Pod", name, namespace):
            lines = [
                line async for line in self._client.log(name, namespace=namespace, tail_lines=tail)
            ]
        return "".join(lines)

    async def close(self) -> None:
        await self._client.close()


def _identity(obj: Mapping[str, Any]) -> tuple[str, str, str | None]:
    meta = obj.get("metadata") or {}
    kind = obj.get("kind")
    name = meta.get("name")
    if not isinstance(kind, str) or not isinstance(name, str):
        raise InvalidInput("a manifest needs a kind and a metadata.name")
    namespace = meta.get("namespace")
    return kind, name, namespace if isinstance(namespace, str) else None
