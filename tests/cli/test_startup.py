"""`corral up` as an operator meets it: logs in the format asked, an access log, and each
start-up failure as one line with nothing started or written before the check."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import CORRAL, corral_env, corral_up

TEXT_RECORD = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:,.]+ (DEBUG|INFO|WARNING|ERROR) ")


def up(
    data: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRAL, "up", "--data-dir", str(data), *args],
        env=corral_env() | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(r: subprocess.CompletedProcess[str], code: int) -> str:
    assert r.returncode == code, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    return r.stderr


def test_a_taken_port_is_one_line_and_nothing_is_started_or_written(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = up(tmp_path / "data", "--port", str(port))
    message = one_line_error(r, 9)
    assert f"port {port} on 127.0.0.1 is in use" in message and "--port" in message
    assert not (tmp_path / "data").exists()  # no admin key, no database, no bus store


def test_a_data_dir_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    message = one_line_error(up(tmp_path / "a-file" / "data", "--port", "0"), 2)
    assert f"data dir {tmp_path / 'a-file' / 'data'} cannot be used" in message
    assert "is not a directory" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in any directory")
def test_a_read_only_data_dir_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o500)
    message = one_line_error(up(data, "--port", "0"), 2)
    assert f"data dir {data} is not writable" in message
    assert list(data.iterdir()) == []


def test_an_unreachable_database_is_one_line_without_its_password(tmp_path: Path) -> None:
    with socket.socket() as free:  # a port with nobody listening on it
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = f"postgresql://corral:hunter2@127.0.0.1:{port}/corral"
    r = up(tmp_path / "data", "--port", "0", env={"CORRAL_DATABASE_URL": url})
    message = one_line_error(r, 9)
    assert f"database unreachable at postgresql://corral:***@127.0.0.1:{port}/corral" in message
    assert "hunter2" not in message
    assert not (tmp_path / "data").exists()


def test_a_bad_log_format_is_one_line(tmp_path: Path) -> None:
    message = one_line_error(up(tmp_path / "data", env={"CORRAL_LOG_FORMAT": "xml"}), 2)
    assert "CORRAL_LOG_FORMAT" in message and "'json' or 'text'" in message


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRAL, "--data-dir", str(data), *args],
        env=corral_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_json_logs_and_the_access_log(tmp_path: Path) -> None:
    with corral_up(tmp_path / "data", env=corral_env() | {"CORRAL_LOG_FORMAT": "json"}) as run:
        _cli(run.data, "org", "create", "acme")
        _cli(run.data, "org", "show", "acme")
        _cli(run.data, "task", "list", "acme", "--cursor", "")
    lines = [line for line in run.output.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]  # every log line is one JSON object
    assert not any(r["logger"].startswith("alembic") for r in records)  # a quiet start
    access = [r for r in records if r["logger"] == "corral.access"]
    shown = [r for r in access if r["path"] == "/v1/orgs/acme" and r["method"] == "GET"]
    assert shown, access
    assert shown[0]["status"] == 200 and shown[0]["org"] == "acme"
    assert isinstance(shown[0]["duration_ms"], float)
    created = [r for r in access if r["path"] == "/v1/orgs" and r["method"] == "POST"]
    assert created and created[0]["status"] == 201 and "org" not in created[0]
    text_logs = [line for line in run.output.splitlines() if TEXT_RECORD.match(line)]
    assert text_logs == []  # no record escaped the JSON format


def test_text_logs_are_lines_for_people(tmp_path: Path) -> None:
    with corral_up(tmp_path / "data", env=corral_env() | {"CORRAL_LOG_FORMAT": "text"}) as run:
        _cli(run.data, "org", "create", "acme")
        _cli(run.data, "org", "show", "acme")
    lines = [line for line in run.output.splitlines() if " corral.access: " in line]
    assert any(
        " INFO corral.access: GET /v1/orgs/acme 200 " in line and "org=acme" in line
        for line in lines
    ), lines
    assert not any(line.startswith("{") for line in run.output.splitlines())
    assert any(TEXT_RECORD.match(line) for line in lines)
