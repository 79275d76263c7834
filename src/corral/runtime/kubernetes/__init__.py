"""The Kubernetes runtime: each agent a Pod with a PVC in its organization's namespace.

What belongs here, one role a module:

- ``runtime``: :class:`KubernetesRuntime`, the :class:`~corral.runtime.base.AgentRuntime` face;
- ``gateway``: the narrow seam to an API server (:class:`K8sGateway`), and its lightkube
  implementation, where the client's errors become Corral's;
- ``manifests``: the objects for an organization's boundary and for each agent, as plain dicts;
- ``names``: the names, labels and annotations those objects carry, and Kubernetes' rules for
  names;
- ``status``: what a pod says of its agent and a quota of its organization's use.

Only ``gateway`` talks to a cluster, and only it imports the Kubernetes client; ``manifests``,
``names`` and ``status`` are pure. This face exports the runtime alone, so that importing it
(the CLI renders manifests on every ``corral k8s render``) does not load the client: whoever
builds a runtime imports ``gateway`` for the :class:`~.gateway.LightkubeGateway` it needs.
Nothing here knows the local runtime.
"""

from corral.runtime.kubernetes.runtime import KubernetesRuntime, QuotaDrift, QuotaStatus

__all__ = ["KubernetesRuntime", "QuotaDrift", "QuotaStatus"]
