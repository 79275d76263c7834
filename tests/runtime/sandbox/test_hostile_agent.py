"""A hostile agent in the sandbox: every crossing it attempts is refused, under both launch
paths, launched by root and by an ordinary user; and what an agent needs still works.

The same script run without the sandbox (as root) succeeds at every attempt: that proves each
attempt is real, so a refusal here is the sandbox's doing and the suite fails if one is not.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.runtime.sandbox.conftest import (
    HOSTILE,
    LAUNCHES,
    ORG_UID,
    WHO,
    World,
    launch,
    make_world,
    outcomes,
    skip_unless_possible,
)

ATTEMPTS = [
    "read_data_dir_secret",
    "list_data_dir",
    "read_other_workspace",
    "write_other_workspace",
    "write_outside",
    "connect_denied_port",
    "bind_tcp",
    "connect_abstract_socket",
    "see_other_pids",
    *(
        f"{action}_{victim}"
        for victim in ("platform", "peer")
        for action in (
            "signal",
            "ptrace",
            "read_environ",
            "read_cmdline",
            "process_vm_readv",
            "pidfd_open",
            "pidfd_getfd",
        )
    ),
    "mount",
    "unshare_user_namespace",
    "clone_new_user_namespace",
    "chroot",
    "bpf",
    "keyctl",
    "add_key",
    "perf_event_open",
    "userfaultfd",
]
# refused by the seccomp filter itself: the errno is EPERM whatever else would say no
BY_SECCOMP = [
    "ptrace_peer",
    "pidfd_getfd_peer",
    "mount",
    "unshare_user_namespace",
    "clone_new_user_namespace",
    "chroot",
    "bpf",
    "keyctl",
    "add_key",
    "perf_event_open",
    "userfaultfd",
]
CONTROLS = [
    "works_workspace",
    "works_tmp",
    "works_imports",
    "works_connect_allowed_port",
    "works_asyncio_subprocess",
    "works_threads",
    "works_resolve_localhost",
]


@pytest.fixture(scope="module")
def worlds(python: str) -> Iterator[dict[str, World]]:
    with make_world("root", python) as as_root, make_world("user", python) as as_user:
        yield {"root": as_root, "user": as_user}


_runs: dict[tuple[str, str], subprocess.CompletedProcess[str]] = {}


@pytest.fixture(params=WHO)
def who(request: pytest.FixtureRequest, host_report: Any) -> str:
    skip_unless_possible(request.param, host_report)
    return str(request.param)


@pytest.fixture(params=LAUNCHES)
def run(
    request: pytest.FixtureRequest, who: str, worlds: dict[str, World], python: str
) -> dict[str, dict[str, Any]]:
    """The hostile script's outcomes for this launcher and launch path (run once, kept)."""
    key = (who, str(request.param))
    if key not in _runs:
        world = worlds[who]
        script = [str(HOSTILE), json.dumps(world.config)]
        _runs[key] = launch(world, python, key[1], world.policy(), script)
    return outcomes(_runs[key])


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_sandboxed_agent_is_refused(run: dict[str, dict[str, Any]], attempt: str) -> None:
    assert run[attempt]["ok"] is False, f"{attempt} crossed: {run[attempt]['detail']}"


@pytest.mark.parametrize("attempt", BY_SECCOMP)
def test_seccomp_refuses_with_eperm(run: dict[str, dict[str, Any]], attempt: str) -> None:
    assert run[attempt]["detail"].startswith("EPERM"), run[attempt]["detail"]


@pytest.mark.parametrize("control", CONTROLS)
def test_sandboxed_agent_still_works(run: dict[str, dict[str, Any]], control: str) -> None:
    assert run[control]["ok"] is True, f"{control}: {run[control]['detail']}"


def test_sandboxed_agent_has_no_privilege_left(run: dict[str, dict[str, Any]], who: str) -> None:
    status = json.loads(run["status"]["detail"])
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status)
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    assert status["pid"] == "1"  # the first process of its own PID namespace
    uids = set(status["Uid"].split())
    assert uids == {str(ORG_UID)} if who == "root" else uids == {str(64123)}


def test_every_attempt_succeeds_without_the_sandbox(worlds: dict[str, World], python: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the unconfined control needs root: an ordinary user lacks mount, bpf...")
    world = worlds["root"]
    result = outcomes(launch(world, python, "exec", None, [str(HOSTILE), json.dumps(world.config)]))
    crossed = {name for name in ATTEMPTS if result[name]["ok"]}
    assert crossed == set(ATTEMPTS), {n: result[n]["detail"] for n in set(ATTEMPTS) - crossed}
