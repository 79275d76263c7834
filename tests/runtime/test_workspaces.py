"""The on-disk layout of local agents: safe names, private files, log tails."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from corral.domain.errors import InvalidInput
from corral.runtime.local.workspaces import (
    AgentPaths,
    check_name,
    reown,
    tail_lines,
    write_private,
)


@pytest.mark.parametrize("name", ["acme", "acme-corp", "agent-acme-w1-3f9a", "A.b_c"])
def test_dns_like_names_are_accepted(name: str) -> None:
    assert check_name("org", name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "a..b", "-a", "a\0b", "x" * 300])
def test_names_that_could_escape_their_directory_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_name("agent_id", name)


def test_an_agents_paths_live_under_its_org(tmp_path: Path) -> None:
    paths = AgentPaths.of(tmp_path, "acme", "agent-1")
    assert paths.workspace == tmp_path / "orgs/acme/agents/agent-1/workspace"
    assert paths.creds.parent == paths.pidfile.parent == paths.agent_dir
    assert paths.log == paths.agent_dir / "logs/agent.log"


def test_private_files_are_0600_from_the_start(tmp_path: Path) -> None:
    target = tmp_path / "agent.creds"
    target.write_text("old")
    target.chmod(0o644)
    write_private(target, "new secret")
    assert target.read_text() == "new secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert tail_lines(log, 3) == "line 997\nline 998\nline 999\n"
    assert tail_lines(log, 3, block=5) == "line 997\nline 998\nline 999\n"
    assert tail_lines(log, 2000).count("\n") == 1000
    assert tail_lines(log, 0) == ""
    assert tail_lines(tmp_path / "missing.log", 10) == ""
    log.write_text("no newline at the end")
    assert tail_lines(log, 1) == "no newline at the end"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another uid needs root")
def test_a_workspace_kept_from_a_run_as_another_uid_is_given_back_but_never_beyond_it(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.write_text("the platform's")
    ws = tmp_path / "workspace"
    (ws / "deep" / "er").mkdir(parents=True)
    (ws / "deep" / "er" / "state.json").write_text("{}")
    (ws / "link").symlink_to(outside)
    os.link(outside, ws / "hard")  # a root agent could link what is not its own
    os.mkfifo(ws / "fifo")
    owner = (54321, 54321)

    reown(ws, owner)

    for path in (ws, ws / "deep", ws / "deep" / "er", ws / "deep" / "er" / "state.json"):
        assert (path.lstat().st_uid, path.lstat().st_gid) == owner, path
    assert (ws / "link").lstat().st_uid == owner[0]  # the link itself
    assert outside.stat().st_uid == 0  # not what it points to, nor the inode linked twice
    assert (ws / "fifo").lstat().st_uid == 0  # no workspace's content: left as it was
    reown(ws / "absent", owner)  # nothing there: nothing to do
