"""`statuscache demo`: asked for by name, it serves the seeded scenario with no AWS configured at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.demo import scenario
from tests.conftest import free_port
from tests.test_e2e import wait_until_ready

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_command_serves_the_scenario_without_any_aws_configuration(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "STATUSCACHE_"))}
    env |= {
        "HOME": str(home),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "missing" / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "missing" / "credentials"),
        "STATUSCACHE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}",
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "demo.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "demo", "--port", str(port)],
            env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until_ready(base, timeout=60, process=process)
        response = httpx.get(
            f"{base}/v3/images/custom/{scenario.FINISHED}", params={"region": scenario.DEMO_REGION}, timeout=10
        )
        assert response.status_code == 200, response.text
        assert response.json()["imageBuildStatus"] == "BUILD_COMPLETE"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    output = log.read_text(errors="replace")
    # It says what it is before anything else, and how to try it.
    first = output.splitlines()[0]
    assert "DEMO:" in first and "invented images" in first, output
    assert f"try: curl -s '{base}/v3/images/custom/" in output
    assert "Traceback" not in output
