"""Agents for the local runtime's tests: small Python programs run as real processes."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping

from corral.domain.admission import AdmittedResources
from corral.domain.quantities import parse
from corral.runtime.base import LaunchSpec
from tests.runtime.contract import READY, Behaviour

__all__ = ["BEHAVIOURS", "python", "resources", "spec"]

_PRELUDE = "import os, signal, subprocess, sys, time\n"

BEHAVIOURS = {
    Behaviour.SERVE: """
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print(READY, AGENT, flush=True)
        while True:
            signal.pause()
    """,
    Behaviour.STUBBORN: """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(READY, AGENT, flush=True)
        while True:
            signal.pause()
    """,
    Behaviour.FAIL: """
        print(READY, AGENT, flush=True)
        sys.exit(3)
    """,
    Behaviour.FINISH: """
        print(READY, AGENT, flush=True)
    """,
}


def python(code: str, *, agent_id: str = "", executable: str = sys.executable) -> list[str]:
    """argv running ``code`` (dedented) with ``READY`` and ``AGENT`` defined."""
    head = f"{_PRELUDE}READY = {READY!r}\nAGENT = {agent_id!r}\n"
    return [executable, "-c", head + textwrap.dedent(code)]


def resources(memory: str = "256Mi", cpu: str = "1") -> AdmittedResources:
    return AdmittedResources(parse(cpu), parse(cpu), parse(memory), parse(memory))


def spec(
    org: str,
    agent_id: str,
    code: str | Behaviour = Behaviour.SERVE,
    *,
    memory: str = "256Mi",
    cpu: str = "1",
    env: Mapping[str, str] | None = None,
    creds: str = "",
    executable: str = sys.executable,
) -> LaunchSpec:
    source = BEHAVIOURS[code] if isinstance(code, Behaviour) else code
    return LaunchSpec(
        org=org,
        org_id=f"org_{org}",
        agent_id=agent_id,
        name=agent_id.removeprefix("agent-"),
        role="worker",
        resources=resources(memory, cpu),
        command=python(source, agent_id=agent_id, executable=executable),
        env={"CORRAL_ORG": org, "CORRAL_AGENT_ID": agent_id, **(env or {})},
        creds=creds or f"-----BEGIN NATS USER JWT-----\ncreds-of-{agent_id}\n",
    )
