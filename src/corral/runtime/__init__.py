"""Runtimes: where agent processes actually run.

``base`` is the seam: the :class:`AgentRuntime` protocol every runtime implements and the types
they share (``LaunchSpec``, ``RuntimeStatus``, ``Phase``); the control plane imports it and
nothing else from here but the runtime it builds. ``local`` (a package) runs each agent as an
OS process group on this machine; ``kubernetes`` (a package) runs each agent as a Pod with a
PVC in its organization's namespace. The two know nothing of each other, and runtimes never
import the control plane (both held by import-linter contracts). No I/O in this face: the local
runtime's fork server imports it, and must stay free of everything but the standard library.
"""
