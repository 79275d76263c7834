"""Runtimes: where agent processes actually run.

``base`` defines the :class:`AgentRuntime` protocol every runtime implements; ``local`` runs
each agent as an OS process group on this machine; ``kubernetes`` runs each agent as a Pod
with a PVC in its organization's namespace. Runtimes never import the control plane.
"""
