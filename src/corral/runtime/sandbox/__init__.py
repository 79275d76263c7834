"""The sandbox every local agent runs in: identity, namespaces, Landlock and seccomp.

What belongs here: confining *one* process, given a :class:`SandboxPolicy` the control plane
decided. It imports only the standard library (an import-linter contract says so), because the
fork server imports it and a fresh machine has nothing else; no store, no settings, no logging.

How a launcher uses it:

- at start-up, :func:`probe` says what this host can enforce (``Report.describe()`` for the
  operator, ``Report.default_mode``, ``Report.check(policy)`` for strict mode);
- per agent, :meth:`SandboxPolicy.for_agent` builds the policy;
- the fork server's child calls :func:`apply` (returns in the process that becomes the agent);
- the exec path runs ``python -m corral.runtime.sandbox.enter POLICY_FD -- argv...``.
"""

from corral.runtime.sandbox.applying import Applied, apply
from corral.runtime.sandbox.errors import SandboxError, SandboxUnavailable
from corral.runtime.sandbox.policy import IdentityMode, SandboxMode, SandboxPolicy
from corral.runtime.sandbox.probe import Layer, Report, SandboxLevel, probe

__all__ = [
    "Applied",
    "IdentityMode",
    "Layer",
    "Report",
    "SandboxError",
    "SandboxLevel",
    "SandboxMode",
    "SandboxPolicy",
    "SandboxUnavailable",
    "apply",
    "probe",
]
