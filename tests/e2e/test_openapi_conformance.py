"""The API against its own OpenAPI document, with every check schemathesis has: no answer
≥ 500, every status, content type and body as documented, schema-valid requests accepted and
schema-invalid ones refused — as the admin and as an org key. Bounded in time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import wait_until

SCHEMATHESIS = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
pytestmark = pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is not installed")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "up", "--data-dir", str(data), "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: (data / "api.url").exists() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, "corral up exited"
        url = (data / "api.url").read_text().strip()
        admin = (data / "admin.key").read_text().strip()
        made = httpx.post(
            f"{url}/v1/orgs",
            json={"name": "acme"},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=30,
        )
        assert made.status_code == 201, made.text
        yield url, admin, made.json()["apiKey"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("who", ["admin", "org"])
def test_the_api_answers_as_its_openapi_document_says(
    api: tuple[str, str, str], who: str, tmp_path: Path
) -> None:
    url, admin, org = api
    key = admin if who == "admin" else org
    assert SCHEMATHESIS is not None
    run = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "-H",
            f"Authorization: Bearer {key}",
            "--max-examples",
            "10",
            "--max-time",
            "45",
            "--workers",
            "1",
            "--seed",
            "1",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
