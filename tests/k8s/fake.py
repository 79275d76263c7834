"""An in-memory Kubernetes API behind the K8sGateway protocol.

It behaves as an API server does where the runtime's correctness depends on it: creating an
existing object is a 409 even while it is being deleted; objects in a missing namespace are
404s and a terminating namespace refuses new ones; a deleted pod lingers, terminating, before
it is gone; a namespace takes its objects with it; the ResourceQuota refuses pods beyond
``pods`` and counts what is used. Nothing is scheduled or run: a created pod runs at once (or
stays pending), a :class:`Kubelet` decides what its container does, and tests end containers
with :meth:`FakeGateway.finish`. A PVC's files are a dict in :attr:`FakeGateway.volumes`.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

from corral.domain.errors import CorralError, InvalidInput
from corral.domain.quantities import ZERO, Quantity, parse
from corral.runtime.kubernetes.gateway import API_VERSIONS, error_for_status

__all__ = ["FakeGateway", "Kubelet"]

Key = tuple[str, str | None, str]  # kind, namespace, name
_CLUSTER_SCOPED = frozenset({"Namespace"})
_WATCH_END = object()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(obj: Mapping[str, Any], labels: Mapping[str, str], namespace: str | None) -> bool:
    meta = obj.get("metadata") or {}
    if namespace is not None and meta.get("namespace") != namespace:
        return False
    have = meta.get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


class Kubelet:
    """How the fake's containers behave. This one runs nothing and exits 0 when asked."""

    def started(self, fake: FakeGateway, pod: dict[str, Any]) -> None:
        """A pod's container has just started."""

    def stopping(
        self, fake: FakeGateway, pod: dict[str, Any], grace_period: int | None
    ) -> tuple[float, int]:
        """A running pod was deleted: seconds until its container ends, and its exit code."""
        return fake.linger, 0


class FakeGateway:
    """An API server in a dict, for one test.

    Args:
        linger: seconds a deleted pod or namespace stays, terminating, before it is gone.
        pods_start: the phase a new pod gets: "Running" (its container started) or "Pending".
        kubelet: what the containers do.
    """

    def __init__(
        self, *, linger: float = 0.05, pods_start: str = "Running", kubelet: Kubelet | None = None
    ) -> None:
        self.linger = linger
        self.pods_start = pods_start
        self.kubelet = kubelet or Kubelet()
        self.volumes: dict[tuple[str, str], dict[str, str]] = {}  # (namespace, claim): files
        self.objects: dict[Key, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str | None, str]] = []
        self.logs: dict[tuple[str, str], str] = {}
        self.closed = False
        self._faults: dict[tuple[str, str], list[CorralError]] = {}
        self._watchers: list[tuple[Mapping[str, str], str | None, asyncio.Queue[Any]]] = []
        self._uids = itertools.count(1)
        self._versions = itertools.count(1)
        self._timers: list[asyncio.TimerHandle] = []

    # -- test controls ---------------------------------------------------------------------

    def fail_next(self, verb: str, kind: str, error: CorralError) -> None:
        """Make the next ``verb`` (apply, create, get, delete, list, logs) on ``kind`` fail."""
        self._faults.setdefault((verb, kind), []).append(error)

    def finish(self, namespace: str, name: str, *, exit_code: int, reason: str = "") -> None:
        """The pod's container ends with ``exit_code`` (the pod then Succeeded or Failed)."""
        pod = self.objects[("Pod", namespace, name)]
        terminated = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        }
        pod["status"] = {
            **pod["status"],
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [self._container_status(pod, {"terminated": terminated})],
        }
        self._touch(pod)
        self._emit("MODIFIED", pod)

    def run(self, namespace: str, name: str) -> None:
        """A pending pod's container starts."""
        pod = self.objects[("Pod", namespace, name)]
        pod["status"] = {
            **pod["status"],
            "phase": "Running",
            "containerStatuses": [self._container_status(pod, {"running": {"startedAt": _now()}})],
        }
        self._touch(pod)
        self._emit("MODIFIED", pod)
        self.kubelet.started(self, pod)

    def vanish(self, namespace: str, name: str) -> None:
        """The pod is gone at once, its container never seen to end (a forced deletion)."""
        pod = self.objects.pop(("Pod", namespace, name))
        self.logs.pop((namespace, name), None)
        self._emit("DELETED", pod)

    def log(self, namespace: str, name: str, text: str) -> None:
        """The pod's container writes ``text``."""
        self.logs[(namespace, name)] = self.logs.get((namespace, name), "") + text

    def drop_watches(self) -> None:
        """Every open watch ends, as when the API server closes the connections."""
        for _, _, queue in self._watchers:
            queue.put_nowait(_WATCH_END)

    def names(self, kind: str, namespace: str | None = None) -> list[str]:
        return sorted(k[2] for k in self.objects if k[0] == kind and k[1] == namespace)

    def verbs(self, kind: str | None = None) -> list[str]:
        return [f"{verb} {k}" for verb, k, _, _ in self.calls if kind is None or k == kind]

    # -- K8sGateway ------------------------------------------------------------------------

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind, namespace, name = self._identity(obj)
        self._record("apply", kind, namespace, name)
        self._check_namespace(kind, namespace, creating=(kind, namespace, name) not in self.objects)
        current = self.objects.get((kind, namespace, name))
        if current is None:
            return self._store(obj)
        if kind == "Pod" and obj.get("spec") != current.get("spec"):
            raise InvalidInput(
                f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not change fields'
            )
        updated = copy.deepcopy(dict(obj))
        meta = updated.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "deletionTimestamp"):
            if field in current["metadata"]:
                meta[field] = current["metadata"][field]
        if "status" in current:
            updated["status"] = current["status"]
        self.objects[(kind, namespace, name)] = updated
        self._touch(updated)
        if kind == "Pod":
            self._emit("MODIFIED", updated)
        return copy.deepcopy(updated)

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind, namespace, name = self._identity(obj)
        self._record("create", kind, namespace, name)
        self._check_namespace(kind, namespace, creating=True)
        if (kind, namespace, name) in self.objects:
            raise error_for_status(
                409, f'{kind.lower()}s "{name}" already exists', reason="AlreadyExists"
            )
        if kind in ("Pod", "PersistentVolumeClaim") and namespace is not None:
            self._admit(kind, namespace)
        return self._store(obj)

    async def get(self, kind: str, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        self._record("get", kind, namespace, name)
        obj = self._find(kind, namespace, name)
        if kind == "ResourceQuota":
            obj = {**obj, "status": self._quota_status(obj)}
        return copy.deepcopy(obj)

    async def delete(
        self, kind: str, name: str, *, namespace: str | None = None, grace_period: int | None = None
    ) -> None:
        self._record("delete", kind, namespace, name)
        obj = self._find(kind, namespace, name)
        key = (kind, namespace, name)
        if kind not in ("Pod", "Namespace"):
            del self.objects[key]
            if kind == "PersistentVolumeClaim" and namespace is not None:
                self.volumes.pop((namespace, name), None)
            return
        if obj["metadata"].get("deletionTimestamp"):
            return  # already going
        obj["metadata"]["deletionTimestamp"] = _now()
        seconds, exit_code = self.linger, 0
        if kind == "Namespace":
            obj.setdefault("status", {})["phase"] = "Terminating"
        elif obj["status"]["phase"] == "Running":
            seconds, exit_code = self.kubelet.stopping(self, obj, grace_period)
        self._touch(obj)
        if kind == "Pod":
            self._emit("MODIFIED", obj)
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(seconds, self._gone, key, exit_code))

    async def annotate(
        self, kind: str, name: str, *, namespace: str | None, annotations: Mapping[str, str]
    ) -> None:
        self._record("annotate", kind, namespace, name)
        obj = self._find(kind, namespace, name)
        obj["metadata"].setdefault("annotations", {}).update(annotations)
        self._touch(obj)
        if kind == "Pod":
            self._emit("MODIFIED", obj)

    async def list_pods(
        self, *, labels: Mapping[str, str], namespace: str | None = None
    ) -> list[dict[str, Any]]:
        self._record("list", "Pod", namespace, "")
        return [
            copy.deepcopy(o)
            for (kind, _, _), o in sorted(self.objects.items())
            if kind == "Pod" and _matches(o, labels, namespace)
        ]

    async def watch_pods(
        self, *, labels: Mapping[str, str], namespace: str | None = None
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self._record("watch", "Pod", namespace, "")
        queue: asyncio.Queue[Any] = asyncio.Queue()
        entry = (labels, namespace, queue)
        for (kind, _, _), obj in sorted(self.objects.items()):
            if kind == "Pod" and _matches(obj, labels, namespace):
                queue.put_nowait(("ADDED", copy.deepcopy(obj)))
        self._watchers.append(entry)
        try:
            while True:
                item = await queue.get()
                if item is _WATCH_END:
                    return
                yield item
        finally:
            self._watchers.remove(entry)

    async def pod_logs(self, name: str, *, namespace: str, tail: int | None = None) -> str:
        self._record("logs", "Pod", namespace, name)
        self._find("Pod", namespace, name)
        lines = self.logs.get((namespace, name), "").splitlines(keepends=True)
        return "".join(lines[-tail:] if tail else lines)

    async def close(self) -> None:
        self.closed = True
        for timer in self._timers:
            timer.cancel()
        self.drop_watches()

    # -- the API server's behaviour --------------------------------------------------------

    def _identity(self, obj: Mapping[str, Any]) -> Key:
        kind = obj["kind"]
        if API_VERSIONS.get(kind) != obj.get("apiVersion"):
            raise InvalidInput(f"no kind {kind!r} in {obj.get('apiVersion')!r}")
        meta = obj["metadata"]
        namespace = None if kind in _CLUSTER_SCOPED else meta.get("namespace")
        if kind not in _CLUSTER_SCOPED and namespace is None:
            raise InvalidInput(f"{kind} {meta['name']} needs a namespace")
        return kind, namespace, meta["name"]

    def _record(self, verb: str, kind: str, namespace: str | None, name: str) -> None:
        self.calls.append((verb, kind, namespace, name))
        faults = self._faults.get((verb, kind))
        if faults:
            raise faults.pop(0)

    def _find(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.objects.get((kind, None if kind in _CLUSTER_SCOPED else namespace, name))
        if obj is None:
            raise error_for_status(404, f'{kind.lower()}s "{name}" not found', reason="NotFound")
        return obj

    def _check_namespace(self, kind: str, namespace: str | None, *, creating: bool) -> None:
        if namespace is None:
            return
        ns = self.objects.get(("Namespace", None, namespace))
        if ns is None:
            raise error_for_status(404, f'namespaces "{namespace}" not found', reason="NotFound")
        if creating and ns["metadata"].get("deletionTimestamp"):
            raise error_for_status(
                403,
                f"unable to create new content in namespace {namespace} because it is being "
                "terminated",
                reason="Forbidden",
            )

    def _store(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind, namespace, name = self._identity(obj)
        stored = copy.deepcopy(dict(obj))
        meta = stored["metadata"]
        meta["uid"] = f"uid-{next(self._uids)}"
        meta["creationTimestamp"] = _now()
        if kind == "Pod":
            stored["spec"]["nodeName"] = "node-1"
            if self.pods_start == "Running":
                state: dict[str, Any] = {"running": {"startedAt": _now()}}
                stored["status"] = {"phase": "Running"}
            else:
                state = {"waiting": {"reason": "ContainerCreating"}}
                stored["status"] = {"phase": "Pending"}
            stored["status"]["containerStatuses"] = [self._container_status(stored, state)]
        if kind == "Namespace":
            stored["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        self.objects[(kind, namespace, name)] = stored
        self._touch(stored)
        if kind == "PersistentVolumeClaim" and namespace is not None:
            self.volumes[(namespace, name)] = {}
        if kind == "Pod":
            self._emit("ADDED", stored)
            if self.pods_start == "Running":
                self.kubelet.started(self, stored)
        return copy.deepcopy(stored)

    @staticmethod
    def _container_status(pod: Mapping[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        container = pod["spec"]["containers"][0]
        return {
            "name": container["name"],
            "image": container["image"],
            "ready": "running" in state,
            "restartCount": 0,
            "state": state,
        }

    def _touch(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))

    def _emit(self, event: str, pod: Mapping[str, Any]) -> None:
        for labels, namespace, queue in self._watchers:
            if _matches(pod, labels, namespace):
                queue.put_nowait((event, copy.deepcopy(pod)))

    def _gone(self, key: Key, exit_code: int = 0) -> None:
        kind, namespace, name = key
        obj = self.objects.get(key)
        if obj is None:
            return
        if kind == "Pod" and obj["status"]["phase"] == "Running":
            self.finish(namespace or "", name, exit_code=exit_code)  # the container ends first
        del self.objects[key]
        if kind == "Pod":
            self.logs.pop((namespace or "", name), None)
            self._emit("DELETED", obj)
        elif kind == "Namespace":
            for inner in [k for k in self.objects if k[1] == name]:
                removed = self.objects.pop(inner)
                if inner[0] == "Pod":
                    self._emit("DELETED", removed)
            for volume in [v for v in self.volumes if v[0] == name]:
                del self.volumes[volume]

    def _live_pods(self, namespace: str) -> list[dict[str, Any]]:
        return [
            o
            for (kind, ns, _), o in self.objects.items()
            if kind == "Pod"
            and ns == namespace
            and o.get("status", {}).get("phase") not in ("Succeeded", "Failed")
        ]

    def _quota_status(self, quota: Mapping[str, Any]) -> dict[str, Any]:
        namespace = quota["metadata"]["namespace"]
        hard = dict(quota["spec"]["hard"])
        totals: dict[str, Quantity] = dict.fromkeys(hard, ZERO)
        pods = self._live_pods(namespace)
        totals["pods"] = Quantity.of(len(pods))
        totals["persistentvolumeclaims"] = Quantity.of(
            sum(1 for k in self.objects if k[0] == "PersistentVolumeClaim" and k[1] == namespace)
        )
        for pod in pods:
            for container in pod["spec"]["containers"]:
                resources = container.get("resources") or {}
                for section in ("requests", "limits"):
                    for resource, value in (resources.get(section) or {}).items():
                        key = f"{section}.{resource}"
                        if key in totals:  # the first term's format wins, as in the API
                            have = totals[key]
                            totals[key] = (
                                parse(value) + have if have == ZERO else have + parse(value)
                            )
        return {"hard": hard, "used": {k: totals[k].render() for k in hard}}

    def _admit(self, kind: str, namespace: str) -> None:
        quotas = [
            o for (k, ns, _), o in self.objects.items() if k == "ResourceQuota" and ns == namespace
        ]
        for quota in quotas:
            status = self._quota_status(quota)
            resource = "pods" if kind == "Pod" else "persistentvolumeclaims"
            if resource not in status["hard"]:
                continue
            used = parse(status["used"][resource])
            hard = parse(status["hard"][resource])
            if used >= hard:
                name = quota["metadata"]["name"]
                raise error_for_status(
                    403,
                    f"{kind.lower()}s is forbidden: exceeded quota: {name}, requested: "
                    f"{resource}=1, used: {resource}={used.render()}, limited: {resource}={hard.render()}",
                    reason="Forbidden",
                )
