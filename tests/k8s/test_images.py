"""The images and the chart agree: the chart runs the image the Dockerfile builds, agents'
Pods default to the image sdk/Dockerfile builds, and what the Dockerfiles copy exists. Where
a Docker daemon answers, both images are built and the platform's answers `corral --version`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from corral import __version__
from corral.runtime.base import LaunchSpec

ROOT = Path(__file__).resolve().parents[2]
CONTROL_PLANE = ROOT / "Dockerfile"
AGENT = ROOT / "sdk" / "Dockerfile"


def ref_name(dockerfile: Path) -> str:
    found = re.search(r'org\.opencontainers\.image\.ref\.name="([^"]+)"', dockerfile.read_text())
    assert found, dockerfile
    return found.group(1)


def copied(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    return sources


def test_the_chart_runs_the_control_plane_image() -> None:
    values = yaml.safe_load((ROOT / "deploy/helm/corral/values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "deploy/helm/corral/Chart.yaml").read_text())
    assert values["image"]["repository"] == ref_name(CONTROL_PLANE)
    assert chart["appVersion"] == __version__  # the tag the chart pulls by default


def test_agents_pods_default_to_the_agent_base_image() -> None:
    default = LaunchSpec.__dataclass_fields__["image"].default
    assert isinstance(default, str) and default.split(":")[0] == ref_name(AGENT)


@pytest.mark.parametrize("dockerfile", [CONTROL_PLANE, AGENT], ids=["control-plane", "agent"])
def test_what_a_dockerfile_copies_exists(dockerfile: Path) -> None:
    sources = copied(dockerfile)
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which is missing"


def _docker() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.timeout(1800)
@pytest.mark.skipif(not _docker(), reason="no Docker daemon answers here: the images are not built")
def test_both_images_build_and_the_platform_image_runs(tmp_path: Path) -> None:
    for tag, dockerfile in (("corral-test:cp", CONTROL_PLANE), ("corral-test:agent", AGENT)):
        subprocess.run(
            ["docker", "build", "-q", "-t", tag, "-f", str(dockerfile), str(ROOT)],
            check=True,
            timeout=1500,
        )
    out = subprocess.run(
        ["docker", "run", "--rm", "corral-test:cp", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert __version__ in out.stdout
    sdk = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "corral-test:agent",
            "python",
            "-c",
            "import corral.sdk, fastapi",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sdk.returncode != 0 and "No module named 'fastapi'" in sdk.stderr
