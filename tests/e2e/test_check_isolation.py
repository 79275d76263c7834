"""``corral check-isolation`` against a running ``corral up``, both as real processes, the
way an operator would run it against their own platform."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import corral.cli.main as cli_main  # first: it registers every command, this one too
from corral.cli import isolation
from tests.support import CORRAL, corral_env, corral_up


@pytest.fixture
def platform_dir(tmp_path: Path) -> Iterator[Path]:
    with corral_up(tmp_path / "data") as up:
        yield up.data


def corral(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRAL, "--data-dir", str(data), *args],
        env=corral_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_every_probe_passes_against_a_running_platform_and_leaves_nothing(
    platform_dir: Path,
) -> None:
    r = corral(platform_dir, "check-isolation", "--bus-seconds", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "cross-tenant isolation probes" in out
    assert "FAIL" not in out
    rows = [line for line in out.splitlines() if line.startswith("│ ") and "│ pass" in line]
    channels = {line.split("│")[1].strip() for line in rows}
    assert channels == {"api", "secrets", "bus", "workspace"}
    assert f"all {len(rows)} probes passed" in out and len(rows) >= 30
    for probe in (
        "A's agent asking for probe-secret (B's) is denied",
        "A's agent sees none of B's messages while B works",
        "the server refuses A's agent subscriptions beyond its own",
        "A's workspace directory is private (0700)",
        "A's agent cannot read B's file by absolute path",
        "A's key cannot stream B's events",
        "A's key cannot read B's usage",
        "A's key cannot list B's secrets",
    ):
        assert probe in out, probe

    left = corral(platform_dir, "--json", "org", "list")
    assert left.returncode == 0, left.stderr
    assert json.loads(left.stdout)["orgs"] == []  # both throwaway orgs are gone


def test_a_failed_probe_fails_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def probes(admin: object, *, bus_seconds: float) -> list[isolation.Probe]:
        return [
            isolation.Probe("api", "A's key cannot read B", True, "404 (B's key: 200)"),
            isolation.Probe("bus", "A's agent sees none of B's messages", False, "3 foreign"),
        ]

    monkeypatch.setattr(isolation, "probe_isolation", probes)
    r = CliRunner().invoke(cli_main.cli, ["--url", "http://127.0.0.1:9", "check-isolation"])
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output and "1 of 2 probes failed" in r.output
    r = CliRunner().invoke(
        cli_main.cli, ["--url", "http://127.0.0.1:9", "--json", "check-isolation"]
    )
    assert r.exit_code == 1
    assert json.loads(r.output)["passed"] is False
