"""End to end through a real `statuscache serve` process (uvicorn) against the fake AWS."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.demo.fakeaws import FakeAws
from tests.conftest import REGION, free_port

pytestmark = pytest.mark.slow


def wait_until_ready(base: str, *, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Until /readyz answers 200 and, for a process that polls, its first reconcile pass is done.

    Ready alone means "can serve what it has" (a process can be ready before it has reconciled, as during an
    AWS outage); these tests want the start-up reconcile behind them too.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}")
        try:
            ready = httpx.get(f"{base}/readyz", timeout=1)
            reconcile = ready.json().get("reconcile", {})
            if ready.status_code == 200 and (not reconcile.get("polling") or reconcile.get("firstPassDone")):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base} not ready within {timeout}s")


class Server:
    """`statuscache serve` on a free port; its output goes to a file (readable while it runs, never a full pipe)."""

    def __init__(self, *, env: dict[str, str], args: list[str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        descriptor, name = tempfile.mkstemp(prefix="statuscache-serve-", suffix=".log")
        self.log = Path(name)
        with os.fdopen(descriptor, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--port", str(self.port), *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, *, timeout: float = 15) -> str:
        """SIGTERM, then (past `timeout`) SIGKILL; its whole output."""
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        output = self.output()
        self.log.unlink(missing_ok=True)
        return output


@pytest.fixture
def serve_env(aws_state: FakeAws, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "STATUSCACHE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'e2e.db'}",
        "STATUSCACHE_REGIONS": REGION,
        "STATUSCACHE_LOG_LEVEL": "INFO",
    }
    yield env


def test_serve_answers_hit_and_miss_and_keeps_data_across_restart(
    aws_state: FakeAws, serve_env: dict[str, str]
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="e2e-building")
    aws_state.create_ami(region=REGION, image_id="e2e-done")

    server = Server(env=serve_env, args=[])
    try:
        wait_until_ready(server.base, process=server.process)
        # The start-up reconcile already stored both images: hits, no AWS calls.
        aws_state.reset_calls()
        for image_id in ("e2e-building", "e2e-done"):
            response = httpx.get(f"{server.base}/v3/images/custom/{image_id}", params={"region": REGION})
            assert response.status_code == 200
            assert response.headers["x-cache"] == "HIT"
        assert aws_state.total_calls() == 0
        missing = httpx.get(f"{server.base}/v3/images/custom/e2e-unknown")
        assert missing.status_code == 404
    finally:
        output = server.stop()
    assert "Traceback" not in output

    # Restart with AWS unreachable: the SQLite file still answers.
    aws_state.fail_all(status=503)
    restarted = Server(env=serve_env, args=["--no-poll"])
    try:
        wait_until_ready(restarted.base, process=restarted.process)
        response = httpx.get(f"{restarted.base}/v3/images/custom/e2e-done")
        assert response.status_code == 200
        assert response.json()["imageBuildStatus"] == "BUILD_COMPLETE"
        assert response.headers["x-cache"] == "HIT"
    finally:
        restarted.stop()
        aws_state.recover()


def test_serve_refuses_bad_settings(serve_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env={**serve_env, "STATUSCACHE_RESYNC_SECONDS": "soon"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"STATUSCACHE_RESYNC_SECONDS must be a number" in result.stderr


def test_sync_once_prints_images_and_aws_calls(aws_state: FakeAws, serve_env: dict[str, str]) -> None:
    aws_state.create_ami(region=REGION, image_id="synced")
    result = subprocess.run(
        [sys.executable, "-m", "service", "sync", "--once"],
        env=serve_env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"region us-east-1: 1 images seen, 3 AWS calls" in result.stdout


def test_migrate_command_prepares_a_database(serve_env: dict[str, str], tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'migrated.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        env={**serve_env, "STATUSCACHE_DATABASE_URL": url},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "migrated.db").exists()


def test_serve_started_during_an_aws_outage_is_ready_and_serves_its_cache(
    aws_state: FakeAws, serve_env: dict[str, str]
) -> None:
    aws_state.create_ami(region=REGION, image_id="e2e-outage")
    first = Server(env=serve_env, args=[])
    try:
        wait_until_ready(first.base, process=first.process)
        assert httpx.get(f"{first.base}/v3/images/custom/e2e-outage").headers["x-cache"] == "HIT"
    finally:
        first.stop()

    aws_state.fail_all(status=503)
    restarted = Server(env=serve_env, args=[])  # with its poller: its first reconcile cannot succeed
    try:
        started = time.monotonic()
        while True:
            assert time.monotonic() - started < 15, "not ready while AWS is down"
            assert restarted.process.poll() is None
            try:
                ready = httpx.get(f"{restarted.base}/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        body = ready.json()
        response = httpx.get(f"{restarted.base}/v3/images/custom/e2e-outage")
    finally:
        output = restarted.stop()
        aws_state.recover()

    assert body["checks"] == {"database": True, "schema": True}
    assert body["reconcile"]["firstPassDone"] is False
    assert response.status_code == 200 and response.json()["imageBuildStatus"] == "BUILD_COMPLETE"
    assert response.headers["x-cache"] == "HIT" and response.headers["x-cache-stale"] == "unconfirmed"
    assert "Traceback" not in output
