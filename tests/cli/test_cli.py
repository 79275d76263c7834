"""The two-terminal story: `corral up` in one, `corral org ...` in another, as real processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import CORRAL, corral_env, corral_up


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Path]:
    with corral_up(tmp_path / "data") as up:
        yield up.data
    assert "admin key" in up.output and "crl_" in up.output


def corral(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRAL, "--data-dir", str(data), *args],
        env=corral_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_org_create_show_and_errors_from_another_terminal(server: Path) -> None:
    r = corral(server, "org", "create", "acme", "--plan", "standard")
    assert r.returncode == 0, r.stderr
    assert "org-acme" in r.stdout and "crl_" in r.stdout
    show = corral(server, "org", "show", "acme")
    assert show.returncode == 0
    for line in ("requests.cpu", "40Gi", "80Gi"):
        assert line in show.stdout
    assert "│ pods                   │    0 │   15 │" in show.stdout
    bad = corral(server, "org", "create", "Bad_Name!")
    assert bad.returncode == 2 and "DNS-1123" in bad.stderr
    assert bad.stderr.count("\n") == 1  # one clear line
    nope = corral(server, "org", "create", "acme2", "--plan", "nope")
    assert nope.returncode == 2 and "unknown plan 'nope'" in nope.stderr
    js = corral(server, "--json", "org", "list")
    assert '"name": "acme"' in js.stdout
    gone = corral(server, "org", "show", "globex")
    assert gone.returncode == 4 and "not found" in gone.stderr


def test_cli_without_a_server_says_so(tmp_path: Path) -> None:
    r = corral(tmp_path, "--url", "http://127.0.0.1:9", "org", "list")
    assert r.returncode == 9 and "cannot reach the Corral API" in r.stderr


def test_a_payload_too_big_for_an_argument_is_read_from_a_file(server: Path) -> None:
    assert corral(server, "org", "create", "acme").returncode == 0
    big = server.parent / "payload.json"
    big.write_text('{"blob": "' + "b" * 3_000_000 + '"}')
    r = corral(
        server, "--json", "task", "submit", "acme", "--role", "nobody", "--payload", f"@{big}"
    )
    assert r.returncode == 0, r.stderr
    assert '"corral.object"' in r.stdout  # kept in the org's object store, by reference
    missing = corral(server, "task", "submit", "acme", "--role", "x", "--payload", "@/nonexistent")
    assert missing.returncode == 2 and "--payload @/nonexistent" in missing.stderr
