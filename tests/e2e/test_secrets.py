"""Secrets end to end: real agent processes read what a grant covers, over the real bus, and
nothing else — not another org's, not by forging, and no value ever lands on disk, in a log,
in an answer or in a process listing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import psutil
import pytest
from click.testing import CliRunner, Result
from nats.aio.client import Client

from corral.cli.main import cli
from corral.domain import messages, subjects
from corral.sdk.signing import sign_request
from tests.e2e.conftest import Live
from tests.support import CORRAL, corral_env, corral_up, eventually


def _value() -> str:
    return f"ghp_{secrets.token_hex(20)}"


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def _put(client: httpx.AsyncClient, org: str, name: str, value: str) -> None:
    r = await client.put(f"/v1/orgs/{org}/secrets/{name}", json={"value": value})
    assert r.status_code in (200, 201), r.text


async def _grant(client: httpx.AsyncClient, org: str, **body: str) -> dict[str, Any]:
    r = await client.post(f"/v1/orgs/{org}/grants", json=body)
    assert r.status_code == 201, r.text
    grant: dict[str, Any] = r.json()
    return grant


async def _read(live: Live, org: str, agent_id: str, name: str) -> dict[str, Any]:
    """Have the built-in agent read secret ``name``; the finished task."""
    t = await live.task(org, agent=agent_id, payload={"op": "secret", "name": name})
    return await live.wait_task(org, t["id"])


async def _audit(client: httpx.AsyncClient, org: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/orgs/{org}/audit", params={"limit": 1000})
    assert r.status_code == 200, r.text
    entries: list[dict[str, Any]] = r.json()["entries"]
    return entries


def _creds(live: Live, org: str, agent_id: str) -> Path:
    return live.data_dir / "agents" / "orgs" / org / "agents" / agent_id / "agent.creds"


def _processes_showing(value: str) -> list[str]:
    """What of this user's processes' argv and environment shows ``value``."""
    found = []
    for proc in psutil.process_iter(["pid", "uids", "cmdline", "environ"]):
        try:
            if proc.info["uids"] is None or proc.info["uids"].real != os.getuid():
                continue
            argv = " ".join(proc.info["cmdline"] or ())
            env = proc.info["environ"] or {}
        except (psutil.Error, OSError):
            continue
        if value in argv or any(value in f"{k}={v}" for k, v in env.items()):
            found.append(f"pid {proc.info['pid']}: {argv[:80]}")
    return found


def _files_holding(root: Path, *needles: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        try:
            if not path.is_file() or path.is_symlink():
                continue
            data = path.read_bytes()
        except (FileNotFoundError, PermissionError):
            continue
        found += [f"{path.relative_to(root)}" for n in needles if n in data]
    return found


def _pids_of(agent_id: str) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["pid", "environ"]):
        try:
            if (proc.info["environ"] or {}).get("CORRAL_AGENT_ID") == agent_id:
                pids.append(proc.info["pid"])
        except (psutil.Error, OSError):
            continue
    return pids


OrgMaker = Callable[[str], Awaitable[tuple[dict[str, Any], httpx.AsyncClient]]]


@pytest.fixture
async def new_org(live: Live) -> AsyncIterator[OrgMaker]:
    """``await new_org(name)``: a new org and a client with its key, closed afterwards."""
    opened: list[httpx.AsyncClient] = []

    async def make(name: str) -> tuple[dict[str, Any], httpx.AsyncClient]:
        body, client = await live.org(name)
        opened.append(client)
        return body, client

    yield make
    for client in opened:
        await client.aclose()


# -- reads under grants -------------------------------------------------------------------------


async def test_agents_read_what_a_role_or_glob_grant_covers_and_denials_are_audited(
    live: Live,
) -> None:
    await live.org("acme")
    worker, general = await asyncio.gather(
        live.agent("acme", "builder", role="worker"), live.agent("acme", "helper")
    )
    token, ssh, webhook = _value(), _value(), _value()
    for name, value in (
        ("github-token", token),
        ("agent-ssh-prod", ssh),
        ("slack-webhook", webhook),
    ):
        await _put(live.admin, "acme", name, value)
    await _grant(live.admin, "acme", secret="github-token", role="worker")
    await _grant(live.admin, "acme", secret="agent-ssh-*", agent=worker["id"])

    read = await _read(live, "acme", worker["id"], "github-token")
    assert read["state"] == "completed", read
    assert read["result"] == {"length": len(token), "sha256": _sha(token)}
    by_glob = await _read(live, "acme", worker["id"], "agent-ssh-prod")
    assert by_glob["result"] == {"length": len(ssh), "sha256": _sha(ssh)}

    ungranted = await _read(live, "acme", worker["id"], "slack-webhook")
    assert ungranted["state"] == "blocked"
    assert "PermissionDenied" in ungranted["result"]["reason"]
    assert "no grant covers this secret" in ungranted["result"]["reason"]
    other_role = await _read(live, "acme", general["id"], "github-token")
    assert other_role["state"] == "blocked" and "no grant" in other_role["result"]["reason"]
    other_agent = await _read(live, "acme", general["id"], "agent-ssh-prod")
    assert other_agent["state"] == "blocked"

    reads = [
        (e["actor"], e["target"], e["allowed"])
        for e in reversed(await _audit(live.admin, "acme"))
        if e["action"] == "secret.read"
    ]
    assert reads == [
        (f"agent:{worker['id']}", "github-token", True),
        (f"agent:{worker['id']}", "agent-ssh-prod", True),
        (f"agent:{worker['id']}", "slack-webhook", False),
        (f"agent:{general['id']}", "github-token", False),
        (f"agent:{general['id']}", "agent-ssh-prod", False),
    ]
    denial = next(e for e in await _audit(live.admin, "acme") if not e["allowed"])
    assert denial["detail"] == "denied: no grant covers this secret"


async def test_another_orgs_agent_cannot_read_a_secret_of_the_same_name(
    live: Live, new_org: OrgMaker
) -> None:
    _, alpha = await new_org("alpha")
    _, bravo = await new_org("bravo")
    b = await live.agent("bravo", "builder", role="worker")
    value = _value()
    await _put(alpha, "alpha", "github-token", value)
    await _grant(alpha, "alpha", secret="github-token", role="worker")

    denied = await _read(live, "bravo", b["id"], "github-token")
    assert denied["state"] == "blocked"
    assert "no grant covers this secret" in denied["result"]["reason"]
    # granted in its own org, it still finds no such secret there — never alpha's
    await _grant(bravo, "bravo", secret="github-token", role="worker")
    missing = await _read(live, "bravo", b["id"], "github-token")
    assert missing["state"] == "blocked" and "not found" in missing["result"]["reason"]
    assert _sha(value) not in str(missing)

    assert all(e["action"] != "secret.read" for e in await _audit(alpha, "alpha"))
    bravo_reads = [e for e in await _audit(bravo, "bravo") if e["action"] == "secret.read"]
    assert [e["allowed"] for e in bravo_reads] == [False, False]


async def test_an_org_key_cannot_touch_another_orgs_secrets_grants_or_audit(
    new_org: OrgMaker,
) -> None:
    _, alpha = await new_org("alpha")
    _, bravo = await new_org("bravo")
    value = _value()
    await _put(bravo, "bravo", "github-token", value)
    grant = await _grant(bravo, "bravo", secret="github-token", role="worker")
    for method, path in [
        ("GET", "secrets"),
        ("GET", "secrets/github-token"),
        ("DELETE", "secrets/github-token"),
        ("GET", "grants"),
        ("DELETE", f"grants/{grant['id']}"),
        ("GET", "audit"),
    ]:
        r = await alpha.request(method, f"/v1/orgs/bravo/{path}")
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    r = await alpha.put("/v1/orgs/bravo/secrets/github-token", json={"value": "x"})
    assert r.status_code == 404
    r = await alpha.post("/v1/orgs/bravo/grants", json={"secret": "*", "role": "worker"})
    assert r.status_code == 404

    listed = await bravo.get("/v1/orgs/bravo/secrets")
    assert [(s["name"], s["version"]) for s in listed.json()["secrets"]] == [("github-token", 1)]
    assert value not in listed.text
    assert value not in (await bravo.get("/v1/orgs/bravo/audit")).text
    assert len((await bravo.get("/v1/orgs/bravo/grants")).json()["grants"]) == 1


# -- forging over the bus -------------------------------------------------------------------------


@pytest.fixture
async def buses() -> AsyncIterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for nc in opened:
        await nc.close()


async def _connect(live: Live, org: str, agent_id: str, opened: list[Client]) -> Client:
    """A raw NATS connection with the agent's own credentials, as a compromised agent has."""
    nc = await nats.connect(
        live.platform.nats.url,
        user_credentials=str(_creds(live, org, agent_id)),
        inbox_prefix=subjects.agent_inbox_prefix(agent_id).encode(),
        allow_reconnect=False,
    )
    opened.append(nc)
    return nc


async def _ask(nc: Client, body: dict[str, Any]) -> dict[str, Any]:
    reply = await nc.request(subjects.VAULT_GET, messages.encode(body), timeout=5)
    return messages.decode(reply.data)


def _denied(reply: dict[str, Any], reason: str) -> bool:
    error = reply.get("error", {})
    return (
        "value" not in reply
        and error.get("code") == "permission_denied"
        and (reason in error.get("message", ""))
    )


async def test_forged_org_agent_or_replayed_requests_are_denied(
    live: Live, new_org: OrgMaker, buses: list[Client]
) -> None:
    alpha_org, alpha = await new_org("alpha")
    _, bravo = await new_org("bravo")
    a, b = await asyncio.gather(
        live.agent("alpha", "builder", role="worker"), live.agent("bravo", "builder", role="worker")
    )
    value_a, value_b = _value(), _value()
    for client, org, value in ((alpha, "alpha", value_a), (bravo, "bravo", value_b)):
        await _put(client, org, "github-token", value)
        await _grant(client, org, secret="github-token", role="worker")
    creds_a = _creds(live, "alpha", a["id"]).read_text()
    creds_b = _creds(live, "bravo", b["id"]).read_text()
    bus_a = await _connect(live, "alpha", a["id"], buses)
    bus_b = await _connect(live, "bravo", b["id"], buses)

    def signed(creds: str, org: str, agent_id: str, **extra: Any) -> dict[str, Any]:
        return sign_request(creds=creds, org=org, agent_id=agent_id, secret="github-token", **extra)

    # the rig works: B's honest request gets B's own value
    honest = signed(creds_b, "bravo", b["id"])
    assert base64.b64decode((await _ask(bus_b, honest))["value"]) == value_b.encode()

    for org in ("alpha", alpha_org["id"]):
        reply = await _ask(bus_b, signed(creds_b, org, b["id"]))
        assert _denied(reply, "the request names another organization"), reply
    reply = await _ask(bus_b, signed(creds_b, "bravo", a["id"]))
    assert _denied(reply, "names another agent than the one connected"), reply
    reply = await _ask(bus_b, signed(creds_b, "alpha", a["id"]))
    assert _denied(reply, "names another agent than the one connected"), reply

    captured = signed(creds_a, "alpha", a["id"])  # what A sent, as if sniffed
    assert base64.b64decode((await _ask(bus_a, captured))["value"]) == value_a.encode()
    assert _denied(await _ask(bus_b, captured), "names another agent than the one connected")
    assert _denied(await _ask(bus_a, captured), "replayed request")
    assert _denied(await _ask(bus_b, honest), "replayed request")

    tampered = {**signed(creds_b, "bravo", b["id"]), "secret": "other-token"}
    assert _denied(await _ask(bus_b, tampered), "bad signature")
    stale = signed(creds_b, "bravo", b["id"], ts=int(time.time()) - 3600)
    assert _denied(await _ask(bus_b, stale), "timestamp outside")
    b_key_as_a = {**signed(creds_b, "bravo", b["id"]), "publicKey": captured["publicKey"]}
    assert _denied(await _ask(bus_b, b_key_as_a), "public key is not the one recorded")

    alpha_reads = [e for e in await _audit(alpha, "alpha") if e["action"] == "secret.read"]
    assert [(e["actor"], e["allowed"]) for e in alpha_reads] == [
        ("unverified-agent:" + a["id"], False),  # the replay
        (f"agent:{a['id']}", True),
    ]
    bravo_denials = [
        e["detail"] for e in await _audit(bravo, "bravo") if e["action"] == "secret.read"
    ]
    for reason in ("another organization", "replayed", "bad signature", "timestamp", "public key"):
        assert any(reason in d for d in bravo_denials), (reason, bravo_denials)
    assert not any(value_a in d or value_b in d for d in bravo_denials)


# -- no value anywhere ------------------------------------------------------------------------


async def test_no_value_on_disk_in_logs_or_in_agents_argv_and_env(
    live: Live, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    await live.org("acme")
    worker = await live.agent("acme", "builder", role="worker")
    value = _value()
    await _put(live.admin, "acme", "github-token", value)
    await _put(live.admin, "acme", "agent-ssh-prod", value + "-ssh")
    await _grant(live.admin, "acme", secret="*", role="worker")
    for name in ("github-token", "agent-ssh-prod"):
        assert (await _read(live, "acme", worker["id"], name))["state"] == "completed"
    assert (await _read(live, "acme", worker["id"], "nope"))["state"] == "blocked"
    r = await live.admin.put("/v1/orgs/acme/secrets/Bad_Name", json={"value": value})
    assert r.status_code == 422 and value not in r.text

    needles = (value.encode(), base64.b64encode(value.encode()), value.encode().hex().encode())
    assert _files_holding(live.data_dir, *needles) == []
    # the walk does read the database: the names are there, in clear, unlike the values
    assert any(f.startswith("corral.db") for f in _files_holding(live.data_dir, b"github-token"))
    assert _pids_of(worker["id"]), "the agent still runs"
    assert _processes_showing(value) == []
    out, err = capfd.readouterr()
    for needle in needles:
        assert needle.decode() not in caplog.text
        assert needle.decode() not in out + err


# -- the command line -----------------------------------------------------------------------------


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Path]:
    """``corral up`` as its own process, as a user runs it; yields its data dir."""
    with corral_up(tmp_path / "data") as running_up:
        yield running_up.data
    assert "ghp_" not in running_up.output  # no value in the control plane's log


async def _corral(data: Path, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CORRAL,
        "--data-dir",
        str(data),
        *args,
        env=corral_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_secret_set_reads_stdin_in_its_own_process(up: Path, tmp_path: Path) -> None:
    url = (up / "api.url").read_text().strip()
    key = (up / "admin.key").read_text().strip()
    value = _value() + "\n"  # stored byte for byte, trailing newline included
    file_value = _value()
    (tmp_path / "ssh-key").write_text(file_value)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as api:
        assert (await api.post("/v1/orgs", json={"name": "acme"})).status_code == 201
        r = await api.post(
            "/v1/orgs/acme/agents", json={"name": "builder", "role": "worker", "wait": True}
        )
        agent_id = r.json()["id"]
        await _grant(api, "acme", secret="*", role="worker")

        from_stdin, from_file = await asyncio.gather(
            _corral(up, "secret", "set", "acme", "github-token", stdin=value.encode()),
            _corral(
                up, "--json", "secret", "set", "acme", "ssh", "--file", str(tmp_path / "ssh-key")
            ),
        )
        assert from_stdin[0] == 0, from_stdin[2]
        assert from_stdin[1] == "stored secret github-token version 1 in acme\n"
        assert from_file[0] == 0, from_file[2]
        assert json.loads(from_file[1])["version"] == 1

        for name, expected in (("github-token", value), ("ssh", file_value)):
            t = await api.post(
                "/v1/orgs/acme/tasks",
                json={"agent": agent_id, "payload": {"op": "secret", "name": name}},
            )

            async def done(task_id: str = t.json()["id"]) -> dict[str, Any] | None:
                found: dict[str, Any] = (await api.get(f"/v1/orgs/acme/tasks/{task_id}")).json()
                return found if found["state"] in ("completed", "blocked") else None

            finished = await eventually(done, timeout=30, message=f"read of {name}")
            assert finished["result"] == {"length": len(expected), "sha256": _sha(expected)}
        assert _processes_showing(value.strip()) == []
        assert _processes_showing(file_value) == []
    assert _files_holding(up, value.strip().encode(), file_value.encode()) == []


# The other commands, in this process against the live server: the CLI's synchronous client
# runs in a worker thread while the event loop serves it.


async def _cli(live: Live, *args: str, stdin: bytes | None = None) -> Result:
    runner = CliRunner()
    target = ["--url", live.server.url, "--api-key", live.platform.new_admin_key]
    return await asyncio.to_thread(
        runner.invoke, cli, [*target, *args], input=stdin, env={"COLUMNS": "200"}
    )


async def test_cli_secret_grant_and_audit_commands(live: Live, tmp_path: Path) -> None:
    await live.org("acme")
    agent = await live.agent("acme", "builder", role="worker")
    value = _value()

    r = await _cli(live, "secret", "set", "acme", "github-token", stdin=value.encode())
    assert r.exit_code == 0, r.output
    assert r.stdout == "stored secret github-token version 1 in acme\n"
    r = await _cli(live, "secret", "set", "acme", "github-token", stdin=value.encode())
    assert "version 2" in r.stdout
    (tmp_path / "key").write_bytes(b"\x00\xffbinary")
    r = await _cli(live, "secret", "set", "acme", "agent-ssh-prod", "--file", str(tmp_path / "key"))
    assert r.exit_code == 0, r.output

    r = await _cli(live, "grant", "add", "acme", "--secret", "github-token", "--role", "worker")
    assert r.exit_code == 0 and "role worker" in r.stdout
    r = await _cli(
        live,
        "--json",
        "grant",
        "add",
        "acme",
        "--secret",
        "agent-ssh-[a-z]*",
        "--agent",
        agent["id"],
    )
    assert r.exit_code == 0, r.output
    glob = json.loads(r.stdout)
    assert glob["secret"] == "agent-ssh-[a-z]*" and glob["agent"] == agent["id"]
    r = await _cli(live, "grant", "list", "acme")
    assert "agent-ssh-[a-z]*" in r.stdout and f"agent {agent['id']}" in r.stdout

    done = await _read(live, "acme", agent["id"], "agent-ssh-prod")
    assert done["result"]["sha256"] == hashlib.sha256(b"\x00\xffbinary").hexdigest()

    r = await _cli(live, "--json", "secret", "list", "acme")
    listed = json.loads(r.stdout)["secrets"]
    assert [(s["name"], s["version"]) for s in listed] == [
        ("agent-ssh-prod", 1),
        ("github-token", 2),
    ]
    r = await _cli(live, "secret", "list", "acme")
    assert "github-token" in r.stdout and value not in r.stdout
    r = await _cli(live, "secret", "show", "acme", "github-token")
    assert "github-token" in r.stdout and value not in r.stdout
    r = await _cli(live, "audit", "acme", "--limit", "2")
    assert r.exit_code == 0, r.output
    assert "secret.read" in r.stdout and f"agent:{agent['id']}" in r.stdout
    assert "older entries: --before" in r.stderr
    r = await _cli(live, "--json", "audit", "acme")
    actions = [e["action"] for e in json.loads(r.stdout)["entries"]]
    assert actions.count("secret.put") == 3 and actions.count("grant.add") == 2

    r = await _cli(live, "grant", "remove", "acme", glob["id"])
    assert r.stdout == f"removed grant {glob['id']}\n"
    r = await _cli(live, "secret", "delete", "acme", "github-token")
    assert r.stdout == "deleted secret github-token\n"
    r = await _cli(live, "--json", "secret", "list", "acme")
    assert [s["name"] for s in json.loads(r.stdout)["secrets"]] == ["agent-ssh-prod"]


async def test_cli_errors_are_one_line_and_never_show_the_value(live: Live, tmp_path: Path) -> None:
    await live.org("acme")
    value = _value()
    cases: list[tuple[list[str], bytes | None, int, str]] = [
        (["secret", "set", "acme", "Bad_Name"], value.encode(), 2, "DNS-1123"),
        (["secret", "set", "acme", "empty"], b"", 2, "error: no value: stdin is empty"),
        (["secret", "set", "acme", "x", "--file", str(tmp_path / "nope")], None, 2, "cannot read"),
        (["secret", "set", "globex", "x"], value.encode(), 4, "organization 'globex' not found"),
        (["secret", "delete", "acme", "missing"], None, 4, "secret 'missing' not found"),
        (
            ["grant", "add", "acme", "--secret", "x"],
            None,
            2,
            "give exactly one of --role or --agent",
        ),
        (
            ["grant", "add", "acme", "--secret", "x", "--role", "a", "--agent", "b"],
            None,
            2,
            "exactly one",
        ),
        (["grant", "add", "acme", "--secret", "X Y", "--role", "a"], None, 2, "grant pattern"),
        (["grant", "remove", "acme", "grant_0"], None, 4, "grant 'grant_0' not found"),
    ]
    for args, stdin, code, message in cases:
        r = await _cli(live, *args, stdin=stdin)
        assert r.exit_code == code, (args, r.output)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert message in r.stderr, (args, r.stderr)
        assert value not in r.output
    r = await _cli(live, "secret", "set", "acme", "x", value)
    assert r.exit_code == 2 and "Got unexpected extra argument" in r.stderr
    assert (await live.admin.get("/v1/orgs/acme/secrets")).json()["secrets"] == []


async def test_cli_agent_provision_takes_slots_and_refuses_a_bad_count(live: Live) -> None:
    await live.org("acme")
    r = await _cli(live, "--json", "agent", "provision", "acme", "--name", "wide", "--slots", "8")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["slots"] == 8
    r = await _cli(live, "agent", "provision", "acme", "--name", "bad", "--slots", "0")
    assert r.exit_code == 2 and "slots" in r.output.lower()
    names = [a["name"] for a in (await live.admin.get("/v1/orgs/acme/agents")).json()["agents"]]
    assert names == ["wide"]  # the refused one left nothing
