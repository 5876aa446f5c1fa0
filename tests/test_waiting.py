"""wait_image and `statuscache wait-image`: the decision as a table, and the wait against a live service."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from service.client import AsyncClient, Client, ImageWaitFailed, ImageWaitTimeout
from service.client.waiting import Wait, outcome
from service.demo.fakeaws import FakeAws
from tests.conftest import REGION, LiveService
from tests.test_changes import T, stack_change


def doc(status: str, **more: str) -> dict[str, Any]:
    return {"imageId": "img", "region": REGION, "imageBuildStatus": status, **more}


@pytest.mark.parametrize(
    ("until", "status", "gone", "expected"),
    [
        ("complete", "BUILD_IN_PROGRESS", False, None),
        ("complete", "BUILD_COMPLETE", False, True),
        ("complete", "BUILD_FAILED", False, False),
        ("complete", "DELETE_IN_PROGRESS", False, False),
        ("complete", "DELETE_FAILED", False, False),
        ("complete", "", True, False),
        ("deleted", "BUILD_COMPLETE", False, None),
        ("deleted", "BUILD_FAILED", False, None),
        ("deleted", "DELETE_IN_PROGRESS", False, None),
        ("deleted", "DELETE_COMPLETE", False, True),
        ("deleted", "DELETE_FAILED", False, False),
        ("deleted", "", True, True),
    ],
)
def test_what_ends_a_wait(until: str, status: str, gone: bool, expected: bool | None) -> None:
    ended = outcome(until, doc(status), gone=gone)
    assert (None if ended is None else ended.reached) == expected


def test_a_failure_reason_is_in_the_outcomes_words() -> None:
    ended = outcome("complete", doc("BUILD_FAILED", cloudformationStackStatusReason="boom"), gone=False)
    assert ended is not None and "boom" in ended.reason and "BUILD_FAILED" in ended.reason


def test_the_wait_describes_once_the_stream_says_where_it_starts_and_ignores_changes_before() -> None:
    wait = Wait("img", None, until="complete")
    assert wait.line("retry: 2000") is None
    assert wait.line("id: 41") is None
    marker = wait.line("")
    assert marker is not None  # DESCRIBE: the stream's position is known
    wait.described_as(doc("BUILD_IN_PROGRESS"))
    assert wait.done is None
    # Another region's image of the same id is not this one.
    for line in ("id: 42", "event: image", 'data: {"imageId": "img", "region": "eu-west-1", '
                 '"imageBuildStatus": "BUILD_COMPLETE"}', ""):  # fmt: skip
        assert wait.line(line) is None
    assert wait.done is None
    for line in ("id: 43", "event: image", f'data: {{"imageId": "img", "region": "{REGION}", '
                 '"imageBuildStatus": "BUILD_COMPLETE"}', ""):  # fmt: skip
        wait.line(line)
    assert wait.done is not None and wait.done.reached
    assert wait.watch.call().headers["Last-Event-ID"] == "43"


def test_a_malformed_id_or_until_is_refused_before_any_request() -> None:
    with pytest.raises(Exception, match="does not match"):
        Wait("bad/id", None, until="complete")
    with pytest.raises(ValueError, match="until"):
        Wait("img", None, until="forever")


# --- against a live service ---------------------------------------------------------------------------


def _write(service: LiveService, image_id: str, stack_status: str, minute: int) -> None:
    runtime = service.app.state.runtime
    change = stack_change(image_id, stack_status, at=T + timedelta(minutes=minute))
    service.run(runtime.cache.apply_many([change]))


def _later(seconds: float, action: Any) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


def test_wait_image_returns_within_a_second_of_the_change(live_service: LiveService, aws_state: FakeAws) -> None:
    _write(live_service, "wait-ok", "CREATE_IN_PROGRESS", 0)
    changed_at: list[float] = []

    def complete() -> None:
        _write(live_service, "wait-ok", "CREATE_COMPLETE", 1)
        changed_at.append(time.monotonic())

    with Client(live_service.base_url) as client:
        timer = _later(1.0, complete)
        document = client.wait_image("wait-ok", REGION, timeout=30)
        returned = time.monotonic()
        timer.join()
    assert document["image_build_status"] == "BUILD_COMPLETE"
    assert returned - changed_at[0] < 1.0


def test_an_image_already_done_returns_at_once_and_a_failed_one_raises_with_its_document(
    live_service: LiveService, aws_state: FakeAws
) -> None:
    _write(live_service, "wait-done", "CREATE_COMPLETE", 0)
    _write(live_service, "wait-failed", "ROLLBACK_COMPLETE", 0)
    with Client(live_service.base_url) as client:
        started = time.monotonic()
        assert client.wait_image("wait-done", timeout=30)["image_build_status"] == "BUILD_COMPLETE"
        with pytest.raises(ImageWaitFailed) as failed:
            client.wait_image("wait-failed", timeout=30)
        assert time.monotonic() - started < 5
    assert failed.value.document["image_build_status"] == "BUILD_FAILED"


def test_the_timeout_passes_first(live_service: LiveService, aws_state: FakeAws) -> None:
    _write(live_service, "wait-slow", "CREATE_IN_PROGRESS", 0)
    with Client(live_service.base_url) as client:
        started = time.monotonic()
        with pytest.raises(ImageWaitTimeout):
            client.wait_image("wait-slow", timeout=1.5)
    assert 1.4 < time.monotonic() - started < 3.0


def test_the_async_twin_waits_for_deletion_and_times_out(live_service: LiveService, aws_state: FakeAws) -> None:
    _write(live_service, "wait-del", "CREATE_COMPLETE", 0)

    async def scenario() -> dict[str, Any]:
        async with AsyncClient(live_service.base_url) as client:
            with pytest.raises(ImageWaitTimeout):
                await client.wait_image("wait-del", until="deleted", timeout=0.5)
            timer = _later(0.5, lambda: _write(live_service, "wait-del", "DELETE_IN_PROGRESS", 1))
            with pytest.raises(ImageWaitTimeout):
                await client.wait_image("wait-del", until="deleted", timeout=1.5)
            timer.join()
            timer = _later(0.5, lambda: _write(live_service, "wait-del", "DELETE_COMPLETE", 2))
            try:
                document: dict[str, Any] = await client.wait_image("wait-del", until="deleted", timeout=30)
            finally:
                timer.join()
            return document

    document = asyncio.run(scenario())
    # A stack DescribeStacks no longer returns is the image gone: what is left is who it was.
    assert document["image_id"] == "wait-del"


def _cli(service: LiveService, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STATUSCACHE_URL": service.base_url}
    return subprocess.run(
        [sys.executable, "-m", "service", "wait-image", *args], capture_output=True, text=True, env=env,
        timeout=timeout,
    )  # fmt: skip


def test_the_cli_exit_statuses(live_service: LiveService, aws_state: FakeAws) -> None:
    _write(live_service, "cli-done", "CREATE_COMPLETE", 0)
    _write(live_service, "cli-failed", "ROLLBACK_COMPLETE", 0)
    _write(live_service, "cli-slow", "CREATE_IN_PROGRESS", 0)
    done = _cli(live_service, "-i", "cli-done", "-r", REGION)
    assert done.returncode == 0, done.stderr
    described = subprocess.run(
        [sys.executable, "-m", "service", "describe-image", "-i", "cli-done", "-r", REGION, "--endpoint",
         live_service.base_url], capture_output=True, text=True,
    )  # fmt: skip
    assert done.stdout == described.stdout
    assert "BUILD_COMPLETE" in done.stderr
    failed = _cli(live_service, "--image-id", "cli-failed", "--region", REGION)
    assert failed.returncode == 3 and '"BUILD_FAILED"' in failed.stdout and "BUILD_FAILED" in failed.stderr
    slow = _cli(live_service, "-i", "cli-slow", "--timeout", "1")
    assert slow.returncode == 4 and slow.stdout == ""
    unreachable = _cli(live_service, "-i", "cli-slow", "--endpoint", "http://127.0.0.1:9")
    assert unreachable.returncode == 1 and "could not be reached" in unreachable.stdout
    usage = _cli(live_service, "-i", "cli-slow", "--until", "never")
    assert usage.returncode == 2


def test_the_cli_reports_an_image_that_is_gone(live_service: LiveService, aws_state: FakeAws) -> None:
    gone = _cli(live_service, "-i", "never-was", "-r", REGION)
    assert gone.returncode == 3 and '"message"' in gone.stdout
    deleted = _cli(live_service, "-i", "never-was", "-r", REGION, "--until", "deleted")
    assert deleted.returncode == 0
