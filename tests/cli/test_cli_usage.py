"""The CLI as people and scripts use it, against a real `corral up`: `--json` anywhere, payloads
from files and stdin, full-width tables when piped, one-line usage errors, watching a task as
JSON lines, Ctrl-C on a watch, an agent whose command fails, a request above the default limit
and shell completion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import CORRAL, corral_env, corral_up


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with corral_up(tmp_path_factory.mktemp("cli") / "data") as up:
        yield up.data


def corral(
    data: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRAL, "--data-dir", str(data), *args],
        env=env or corral_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r


@pytest.fixture(scope="module")
def org(server: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    ok(corral(server, "org", "create", "acme", "--plan", "standard"))
    # the roles these tests send work to, run by the built-in agent (nobody else's program)
    roles = tmp_path_factory.mktemp("roles") / "roles.yaml"
    roles.write_text(
        "roles:\n"
        "  - {name: sleeper, maxAgents: 1, slots: 4}\n"
        "  - {name: w, maxAgents: 1, slots: 4}\n"
    )
    ok(corral(server, "role", "apply", "acme", "-f", str(roles)))
    return "acme"


def test_json_is_accepted_after_the_subcommand_as_before_it(server: Path, org: str) -> None:
    after = json.loads(ok(corral(server, "org", "show", org, "--json")).stdout)
    before = json.loads(ok(corral(server, "--json", "org", "show", org)).stdout)
    assert after["name"] == before["name"] == org
    listed = json.loads(ok(corral(server, "org", "--json", "list")).stdout)
    assert org in [o["name"] for o in listed["orgs"]]


def test_a_payload_comes_from_a_file_or_from_stdin(server: Path, org: str, tmp_path: Path) -> None:
    big = {"op": "echo", "blob": "x" * 200_000}  # above what one argument may hold (128 KiB)
    path = tmp_path / "payload.json"
    path.write_text(json.dumps(big))
    from_file = json.loads(
        ok(
            corral(server, "task", "submit", org, "--role", "w", "--payload", f"@{path}", "--json")
        ).stdout
    )
    shown = json.loads(ok(corral(server, "--json", "task", "show", org, from_file["id"])).stdout)
    assert shown["payload"] == big
    piped = corral(
        server, "--json", "task", "submit", org, "--role", "w", "--payload", "-", stdin='{"n": 7}'
    )
    task = json.loads(ok(piped).stdout)
    shown = json.loads(ok(corral(server, "--json", "task", "show", org, task["id"])).stdout)
    assert shown["payload"] == {"n": 7}
    missing = corral(server, "task", "submit", org, "--role", "w", "--payload", "@/no/such.json")
    assert missing.returncode == 2
    assert missing.stderr == "error: --payload @/no/such.json: cannot read /no/such.json: " + (
        "No such file or directory\n"
    )
    bad = corral(server, "task", "submit", org, "--role", "w", "--payload", "-", stdin="{nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --payload - (stdin) is not JSON")


def test_piped_tables_are_not_cut_at_80_columns(server: Path) -> None:
    name = "a-rather-long-organization-name-that-is-wider-than-a-terminal-x"[:59]
    ok(corral(server, "org", "create", name))
    env = {k: v for k, v in corral_env().items() if k != "COLUMNS"}
    listed = ok(corral(server, "org", "list", env=env)).stdout
    assert name in listed and "…" not in listed
    assert max(len(line) for line in listed.splitlines()) > 80


def test_a_usage_error_is_one_line_with_exit_code_2(server: Path, org: str) -> None:
    r = corral(server, "task", "submit", org, "--role", "w", "--priority", "urgent")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "'urgent' is not one of" in r.stderr and "corral task submit --help" in r.stderr
    unknown = corral(server, "org", "list", "--no-such-flag")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: No such option")
    assert unknown.stderr.count("\n") == 1


def test_watch_with_json_prints_each_state_as_a_json_line(server: Path, org: str) -> None:
    r = corral(
        server,
        "task",
        "submit",
        org,
        "--role",
        "sleeper",
        "--payload",
        '{"op": "sleep", "seconds": 0.5}',
        "--watch",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    states = [line["state"] for line in lines]
    assert states[0] == "queued" and states[-1] == "completed"
    assert len(lines) >= 3  # the submit, at least one change on the way, the end
    assert len({line["id"] for line in lines}) == 1
    assert lines[-1]["result"] == {"slept": 0.5}


def test_ctrl_c_on_watch_says_the_task_goes_on(server: Path, org: str) -> None:
    proc = subprocess.Popen(
        [
            *CORRAL,
            "--data-dir",
            str(server),
            "task",
            "submit",
            org,
            "--role",
            "sleeper",
            "--payload",
            '{"op": "sleep", "seconds": 120}',
            "--watch",
            "--json",
        ],
        env=corral_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert f"task {first['id']} goes on" in err
    assert f"corral task watch {org} {first['id']}" in err
    assert "Aborted" not in err and "Traceback" not in err
    shown = json.loads(ok(corral(server, "--json", "task", "show", org, first["id"])).stdout)
    assert shown["state"] not in ("cancelled", "failed")
    ok(corral(server, "task", "cancel", org, first["id"]))


def test_an_agent_whose_command_fails_is_reported_with_its_own_log_lines(
    server: Path, org: str, tmp_path: Path
) -> None:
    missing = tmp_path / "my_agent_that_is_not_there.py"
    r = corral(
        server, "agent", "provision", org, "--name", "broken", "--command", f"python3 {missing}"
    )
    assert r.returncode == 9, r.stderr
    assert "exited before it was ready (code 2)" in r.stderr
    assert "my_agent_that_is_not_there.py" in r.stderr and "No such file" in r.stderr
    assert "cannot reach the Corral API" not in r.stderr


def test_a_cpu_request_above_the_default_limit_names_it_and_the_flag(
    server: Path, org: str
) -> None:
    r = corral(server, "agent", "provision", org, "--name", "big", "--cpu", "4")
    assert r.returncode == 2
    assert "cpu request 4 is above its limit 2 (the plan's default cpu limit" in r.stderr
    assert "--cpu-limit" in r.stderr
    agents = json.loads(ok(corral(server, "--json", "agent", "list", org)).stdout)["agents"]
    assert "big" not in [a["name"] for a in agents]


def test_shell_completion_scripts_are_generated(tmp_path: Path) -> None:
    for shell in ("bash", "zsh", "fish"):
        env = corral_env() | {"_CORRAL_COMPLETE": f"{shell}_source"}
        r = subprocess.run(
            [*CORRAL], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert r.returncode == 0 and "_CORRAL_COMPLETE" in r.stdout, (shell, r.stderr)
    env = corral_env() | {
        "_CORRAL_COMPLETE": "bash_complete",
        "COMP_WORDS": "corral ta",
        "COMP_CWORD": "1",
    }
    r = subprocess.run([*CORRAL], env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["plain,task"], r.stdout
    assert os.path.exists(Path(__file__).parents[2] / "docs" / "cli.md")


def test_a_roles_model_budget_is_applied_from_its_file_and_shown(
    server: Path, org: str, tmp_path: Path
) -> None:
    spec = tmp_path / "spender.yaml"
    spec.write_text(
        "roles:\n  - {name: spender, maxAgents: 1, budget: {tokens: 5000, cost: '2.5'}}\n"
    )
    ok(corral(server, "role", "apply", org, "-f", str(spec)))
    shown = ok(corral(server, "role", "show", org, "spender")).stdout
    assert "model budget per month: 5000 tokens, $2.5" in shown
    wire = json.loads(ok(corral(server, "--json", "role", "show", org, "spender")).stdout)
    assert wire["budget"] == {"tokens": 5000, "cost": "2.5"}
