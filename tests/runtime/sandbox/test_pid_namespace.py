"""The PID namespace helper: the launcher still sees one process that ends the way the agent
did, signals reach the agent, and the agent cannot outlive the process outside."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.sandbox.conftest import World, launch, make_world, skip_unless_possible
from tests.support import wait_until


def eventually(check: Callable[[], bool], *, timeout: float = 30) -> None:
    wait_until(check, timeout=timeout, interval=0.01)


@pytest.fixture(scope="module")
def world(python: str, host_report: Any) -> Iterator[World]:
    who = "root" if os.geteuid() == 0 else "user"
    skip_unless_possible(who, host_report)
    with make_world(who, python) as made:
        yield made


def script(world: World, name: str, body: str) -> list[str]:
    path = Path(world.config["workspace"]) / name
    path.write_text(body)
    os.chmod(path, 0o644)
    return [str(path)]


@pytest.mark.parametrize("how", ["exec", "fork"])
def test_exit_status_is_mirrored(world: World, python: str, how: str) -> None:
    body = "import os, sys; sys.stdout.write(str(os.getpid())); raise SystemExit(7)"
    done = launch(world, python, how, world.policy(), script(world, "exit7.py", body))
    assert (done.returncode, done.stdout) == (7, "1"), done.stderr


@pytest.mark.parametrize("how", ["exec", "fork"])
def test_death_by_signal_is_mirrored(world: World, python: str, how: str) -> None:
    # a fault: as pid 1 of its namespace, a signal it sends itself would be ignored
    body = "import ctypes; ctypes.string_at(0)"
    done = launch(world, python, how, world.policy(), script(world, "die.py", body))
    # the exec path mirrors it exactly; forked.py (like the fork server) reports 128 + signal
    assert done.returncode in (-signal.SIGSEGV, 128 + signal.SIGSEGV), done.stderr


def _start(world: World, python: str, body: str, name: str) -> subprocess.Popen[str]:
    read, write = os.pipe()
    os.write(write, world.policy().encode())
    os.close(write)
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[3] / "src"), "PATH": "/usr/bin:/bin"}
    kwargs: dict[str, Any] = {}
    if world.launcher_uid != os.geteuid():
        kwargs = {"user": world.launcher_uid, "group": world.launcher_uid, "extra_groups": []}
    argv = [python, "-m", "corral.runtime.sandbox.enter", str(read), "--", python]
    proc = subprocess.Popen(
        [*argv, *script(world, name, body)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        pass_fds=(read,),
        **kwargs,
    )
    os.close(read)
    return proc


def test_sigterm_is_forwarded_to_the_agent(world: World, python: str) -> None:
    body = (
        "import signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        "signal.pause()\n"
    )
    proc = _start(world, python, body, "term.py")
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 42
    proc.stdout.close()


def test_agent_dies_with_the_process_outside(world: World, python: str) -> None:
    body = (
        "import os, sys, signal\n"
        "sys.stdout.write(f'{os.getpid()}\\n'); sys.stdout.flush()\n"
        "signal.pause()\n"
    )
    proc = _start(world, python, body, "orphan.py")
    assert proc.stdout is not None and proc.stdout.readline() == "1\n"
    inside = [
        int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    ]
    assert len(inside) == 1
    proc.kill()  # SIGKILL the process outside: no forwarding, only the death signal
    proc.wait(timeout=30)
    eventually(lambda: not Path(f"/proc/{inside[0]}").exists())
    proc.stdout.close()


def test_trampoline_names_the_failed_step(world: World, python: str) -> None:
    policy = world.policy(read_only=(*world.policy().read_only, "/nonexistent"))
    done = launch(world, python, "exec", policy, ["-c", "pass"])
    assert done.returncode == 0, done.stderr  # a missing path is skipped, not an error
    # an ordinary user cannot make namespaces without a user namespace of its own
    switching = world.policy(identity="switch", uid=64124, gid=64124)
    ordinary = World("user", world.base, 64123, 64123, world.config)
    refused = launch(ordinary, python, "exec", switching, ["-c", "pass"])
    assert refused.returncode == 125
    assert "sandbox step 'namespaces' failed" in refused.stderr, refused.stderr
    broken = subprocess.run(
        [sys.executable, "-m", "corral.runtime.sandbox.enter", "99", "--", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert broken.returncode == 125
    assert broken.stderr.startswith("corral-sandbox: ")
