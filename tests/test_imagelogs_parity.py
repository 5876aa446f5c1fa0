"""ParallelCluster's own generated client against statuscache, compared with the aws-parallelcluster library on
the same moto state: equal while the stack and log group exist; after cleanup ours answers the kept evidence
(200, X-Cache: ARCHIVE) where pcluster answers 404.

Both run in a venv of their own (never the project's): STATUSCACHE_PCLUSTER_PYTHON names its python, else one is
created once in .venv-pcluster (`pip install aws-parallelcluster` and the vendored client, as
../shared/vendor/README.md says). Skipped when ../shared is absent (a clone away from the project's machines).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.demo.fakeaws import FakeAws
from tests.conftest import LiveService

REPOSITORY = Path(__file__).resolve().parent.parent
CLIENT_SOURCE = REPOSITORY.parent / "shared" / "vendor" / "pcluster-client-src.tar.gz"
VENV = REPOSITORY / ".venv-pcluster"
REGION = "us-east-1"
IMAGE = "failed-build"
STREAM = "3.9.0/1"
REASON = "Document arn:aws:imagebuilder:us-east-1:123456789012:component/parallelclusterimage/3.9.0/1 failed!"

pytestmark = pytest.mark.slow


def _works(python: str) -> bool:
    probe = [python, "-c", "import pcluster.lib, pcluster_client"]
    return Path(python).exists() and subprocess.run(probe, capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def pcluster_python() -> str:
    if not CLIENT_SOURCE.exists():
        pytest.skip(f"{CLIENT_SOURCE} is absent: ParallelCluster's generated client (pcluster_client) is not here")
    named = os.environ.get("STATUSCACHE_PCLUSTER_PYTHON")
    if named:
        if not _works(named):
            pytest.fail(f"STATUSCACHE_PCLUSTER_PYTHON={named} cannot import pcluster.lib and pcluster_client")
        return named
    python = str(VENV / "bin" / "python")
    if not _works(python):
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "aws-parallelcluster"], check=True)
        with tarfile.open(CLIENT_SOURCE) as archive:
            archive.extractall(VENV / "client", filter="data")
        subprocess.run([python, "-m", "pip", "install", "-q", str(VENV / "client" / "src")], check=True)
    return python


def ask(python: str, service: LiveService, aws: FakeAws, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    env = dict(
        os.environ, AWS_ENDPOINT_URL=aws.endpoint_url, AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION,
    )  # fmt: skip
    script = str(REPOSITORY / "tests" / "pcluster_imagelogs.py")
    done = subprocess.run(
        [python, script, service.base_url, json.dumps(calls)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    answers: list[Any] = json.loads(done.stdout)
    return answers


def failed_build(aws: FakeAws) -> None:
    aws.create_image_stack(region=REGION, image_id=IMAGE, status="ROLLBACK_COMPLETE", reason="build failed",
                           imagebuilder_status="FAILED", imagebuilder_reason=REASON)
    aws.add_stack_event(region=REGION, stack_name=IMAGE, logical_id="ParallelClusterImage", status="CREATE_FAILED",
                        reason=REASON)
    start = int(time.time() * 1000) - 60_000
    aws.put_build_log(region=REGION, image_id=IMAGE, stream=STREAM,
                      messages=[(start + i * 1000, f"step {i}") for i in range(30)])
    aws.put_build_log(region=REGION, image_id=IMAGE, stream="3.9.0/2", messages=[(start, "second stream")])


CALLS: list[tuple[str, dict[str, Any]]] = [
    ("get_image_stack_events", {"image_id": IMAGE, "region": REGION}),
    ("list_image_log_streams", {"image_id": IMAGE, "region": REGION}),
    ("get_image_log_events", {"image_id": IMAGE, "log_stream_name": STREAM, "region": REGION}),
    ("get_image_log_events", {"image_id": IMAGE, "log_stream_name": STREAM, "region": REGION, "limit": 5}),
    ("get_image_log_events",
     {"image_id": IMAGE, "log_stream_name": STREAM, "region": REGION, "limit": 4, "start_from_head": True}),
]  # fmt: skip
BAD_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("get_image_log_events", {"image_id": IMAGE, "log_stream_name": "no-such-stream", "region": REGION}),
    ("get_image_log_events", {"image_id": IMAGE, "log_stream_name": STREAM, "region": REGION, "limit": 0}),
    ("get_image_log_events",
     {"image_id": IMAGE, "log_stream_name": STREAM, "region": REGION,
      "start_time": "2026-01-02T00:00:00Z", "end_time": "2026-01-01T00:00:00Z"}),
    ("get_image_log_events",
     {"image_id": IMAGE, "log_stream_name": STREAM, "region": REGION, "next_token": "f/not-a-token"}),
    ("get_image_stack_events", {"image_id": "never-built", "region": REGION}),
    ("list_image_log_streams", {"image_id": "never-built", "region": REGION}),
]  # fmt: skip


def kept_after_describe(service: LiveService) -> None:
    """The way a build's end reaches the cache (here a live describe; events and reconciliation alike), then
    the capture component's own step until the evidence is kept."""
    described = httpx.get(f"{service.base_url}/v3/images/custom/{IMAGE}", params={"region": REGION})
    assert described.json()["imageBuildStatus"] == "BUILD_FAILED"
    runtime = service.app.state.runtime
    for _ in range(100):
        service.run(runtime.evidence.step())
        if runtime.evidence.captured:
            return
        time.sleep(0.1)
    raise AssertionError("the ended build was never captured")


def test_live_answers_equal_pclusters_and_kept_ones_survive_cleanup(
    pcluster_python: str, live_service: LiveService, aws_state: FakeAws
) -> None:
    failed_build(aws_state)
    live = ask(pcluster_python, live_service, aws_state, CALLS)
    for (operation, params), answer in zip(CALLS, live, strict=True):
        assert answer["pcluster"]["status"] == 200, (operation, params, answer)
        assert answer["ours"]["body"] == answer["pcluster"]["body"], (operation, params)
        assert (answer["ours"]["status"], answer["ours"]["cache"]) == (200, "MISS")

    kept_after_describe(live_service)
    aws_state.delete_stack(region=REGION, stack_name=IMAGE)
    aws_state.delete_build_logs(region=REGION, image_id=IMAGE)

    gone = ask(pcluster_python, live_service, aws_state, CALLS)
    for (operation, params), before, after in zip(CALLS, live, gone, strict=True):
        assert after["pcluster"]["status"] == 404, (operation, params, after)
        assert (after["ours"]["status"], after["ours"]["cache"]) == (200, "ARCHIVE"), (operation, params)
        if operation == "get_image_log_events":
            # The same events; the page tokens are this service's own (signed), not CloudWatch's.
            assert after["ours"]["body"]["events"] == before["pcluster"]["body"]["events"], params
        else:
            assert after["ours"]["body"] == before["pcluster"]["body"], operation


def test_bad_parameters_are_answered_as_pcluster_answers_them(
    pcluster_python: str, live_service: LiveService, aws_state: FakeAws
) -> None:
    failed_build(aws_state)
    for (operation, params), answer in zip(BAD_CALLS, ask(pcluster_python, live_service, aws_state, BAD_CALLS),
                                           strict=True):
        assert answer["ours"]["status"] == answer["pcluster"]["status"], (operation, params, answer)
        assert answer["ours"]["body"] == answer["pcluster"]["body"], (operation, params)


CLI_CALLS = [
    ["get-image-stack-events", "-i", IMAGE],
    ["get-image-stack-events", "-i", IMAGE, "--query", "events[0].resourceStatusReason"],
    ["list-image-log-streams", "-i", IMAGE, "-r", REGION],
    ["get-image-log-events", "-i", IMAGE, "--log-stream-name", STREAM, "--limit", "3"],
    ["get-image-log-events", "-i", IMAGE, "--log-stream-name", STREAM, "--start-from-head", "true", "--limit", "2"],
    ["get-image-log-events", "-i", IMAGE, "--log-stream-name", STREAM, "--start-from-head", "maybe"],
    ["get-image-log-events", "-i", IMAGE, "--log-stream-name", STREAM, "--start-time", "2026-01-02T00:00:00Z",
     "--end-time", "2026-01-01T00:00:00Z"],
    ["get-image-log-events", "-i", "never-built", "--log-stream-name", STREAM],
    ["get-image-stack-events", "-i", "-bad"],
]  # fmt: skip


def test_the_cli_prints_what_pcluster_prints(
    pcluster_python: str, live_service: LiveService, aws_state: FakeAws
) -> None:
    failed_build(aws_state)
    env = dict(
        os.environ, AWS_ENDPOINT_URL=aws_state.endpoint_url, AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION, STATUSCACHE_URL=live_service.base_url,
    )  # fmt: skip
    pcluster = str(Path(pcluster_python).parent / "pcluster")
    for args in CLI_CALLS:
        theirs = subprocess.run([pcluster, *args], env=env, capture_output=True, text=True, timeout=120)
        ours = subprocess.run(
            [sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), args
