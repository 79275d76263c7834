"""Agents for the local runtime's tests: small Python programs run as real processes.

Each program runs one of two ways (``launch``): exec'd as ``python -c CODE``, or forked by the
runtime's fork server as ``python -m tests.runtime.codeagent`` with the code in
``CORRAL_TEST_CODE``. :data:`LAUNCHES` names them; the ``launch`` fixture sets
:data:`default_launch` for a test, so the same test runs both ways.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping

from corral.domain.admission import AdmittedResources
from corral.domain.quantities import parse
from corral.runtime.base import LaunchSpec
from tests.runtime.contract import READY, Behaviour

__all__ = ["BEHAVIOURS", "LAUNCHES", "default_launch", "python", "resources", "spec"]

LAUNCHES = ("exec", "zygote")
default_launch = "exec"
CODE_AGENT = "tests.runtime.codeagent"

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


def source(code: str, *, agent_id: str = "") -> str:
    """``code`` (dedented) with the prelude's imports and ``READY`` and ``AGENT`` defined."""
    return f"{_PRELUDE}READY = {READY!r}\nAGENT = {agent_id!r}\n" + textwrap.dedent(code)


def python(code: str, *, agent_id: str = "", executable: str = sys.executable) -> list[str]:
    """argv running ``code`` (see :func:`source`) in a fresh interpreter."""
    return [executable, "-c", source(code, agent_id=agent_id)]


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
    launch: str | None = None,
) -> LaunchSpec:
    text = BEHAVIOURS[code] if isinstance(code, Behaviour) else code
    extra: dict[str, str] = {}
    if (launch or default_launch) == "zygote" and executable == sys.executable:
        command = [sys.executable, "-m", CODE_AGENT]
        extra["CORRAL_TEST_CODE"] = source(text, agent_id=agent_id)
    else:
        command = python(text, agent_id=agent_id, executable=executable)
    return LaunchSpec(
        org=org,
        org_id=f"org_{org}",
        agent_id=agent_id,
        name=agent_id.removeprefix("agent-"),
        role="worker",
        resources=resources(memory, cpu),
        command=command,
        env={"CORRAL_ORG": org, "CORRAL_AGENT_ID": agent_id, **extra, **(env or {})},
        creds=creds or f"-----BEGIN NATS USER JWT-----\ncreds-of-{agent_id}\n",
    )
