"""SIGTERM drains: readiness goes 503, streams end cleanly, in-flight work finishes, the process exits in time."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from service.demo.fakeaws import FakeAws
from tests.conftest import REGION, free_port
from tests.test_e2e import wait_until_ready

pytestmark = pytest.mark.slow

SHUTDOWN_SECONDS = 6.0
SLOW_LOOKUP_SECONDS = 1.5


class SlowFakeAws(FakeAws):
    """The fake AWS (same moto state) on its own port, with some operations made slow."""

    def __init__(self) -> None:
        self.slow: dict[str, float] = {}
        super().__init__()

    def _record(self, key: str) -> tuple[str, int] | None:
        delay = self.slow.get(key)
        if delay:
            time.sleep(delay)
        return super()._record(key)


@pytest.fixture
def slow_aws(aws_state: FakeAws) -> Iterator[SlowFakeAws]:
    fake = SlowFakeAws.__new__(SlowFakeAws)
    fake.slow = {}
    FakeAws.__init__(fake)  # resets moto: the session fake sees the same (empty) state
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def imagebuilder_event(arn: str, status: str, *, at: datetime) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "EC2 Image Builder Image State Change",
        "source": "aws.imagebuilder",
        "account": "123456789012",
        "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [arn],
        "detail": {"state": {"status": status}},
    }


@pytest.mark.parametrize("events", ["flowing", "idle"])
def test_sigterm_drains_streams_requests_and_the_event_batch(
    slow_aws: SlowFakeAws, tmp_path: Path, events: str
) -> None:
    sqs = boto3.client(
        "sqs", region_name=REGION, endpoint_url=slow_aws.endpoint_url,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    queue_url = sqs.create_queue(QueueName="drain-events", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    image_ids = [f"drain-{index}" for index in range(5)]
    arns = []
    for image_id in image_ids:
        slow_aws.create_image_stack(region=REGION, image_id=image_id, imagebuilder_status="BUILDING")
        arns.append(slow_aws.imagebuilder_arn(region=REGION, image_id=image_id))
    database = tmp_path / "drain.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": slow_aws.endpoint_url,
        "STATUSCACHE_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "STATUSCACHE_REGIONS": REGION,
        "STATUSCACHE_EVENTS_QUEUE_URL": queue_url,
        "STATUSCACHE_RESYNC_SECONDS": "3600",
        "STATUSCACHE_SHUTDOWN_SECONDS": str(SHUTDOWN_SECONDS),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    sent: list[str] = []
    stop_sending = threading.Event()

    def send_events() -> None:
        statuses = ["TESTING", "DISTRIBUTING", "BUILDING"]
        index = 0
        # Each round a second later than the last and than anything observed: every event applies as it is,
        # with no AWS look-up (those are made slow below, for the request in flight only).
        start = datetime.now(UTC) + timedelta(minutes=1)
        while not stop_sending.is_set():
            entries = []
            for arn in arns:
                event = imagebuilder_event(arn, statuses[index % len(statuses)], at=start + timedelta(seconds=index))
                sent.append(event["id"])
                entries.append({"Id": str(len(entries)), "MessageBody": json.dumps(event)})
            sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            index += 1
            time.sleep(0.05)

    streams: list[dict[str, Any]] = [{} for _ in range(3)]

    def follow(result: dict[str, Any]) -> None:
        try:
            with httpx.stream("GET", f"{base}/v3/image-changes", timeout=30) as response:
                result["status"] = response.status_code
                for line in response.iter_lines():
                    result.setdefault("lines", []).append(line)
            result["ended"] = time.monotonic()
        except Exception as exc:  # reported by the assertions below
            result["error"] = repr(exc)

    in_flight: dict[str, Any] = {}

    def slow_describe() -> None:
        try:
            response = httpx.get(f"{base}/v3/images/custom/drain-unknown", timeout=30)
            in_flight["status"] = response.status_code
        except Exception as exc:
            in_flight["error"] = repr(exc)

    try:
        wait_until_ready(base, process=process)
        sender = threading.Thread(target=send_events)
        sender.start()
        followers = [threading.Thread(target=follow, args=(result,)) for result in streams]
        for thread in followers:
            thread.start()
        time.sleep(1.5)  # streams connected, batches flowing
        if events == "idle":
            stop_sending.set()
            sender.join()
            time.sleep(1.5)  # every batch handled: the receivers wait in a long poll
        slow_aws.slow["ec2.DescribeImages"] = SLOW_LOOKUP_SECONDS
        requester = threading.Thread(target=slow_describe)
        requester.start()
        time.sleep(0.3)  # the describe is waiting on the slow AWS call

        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=SHUTDOWN_SECONDS + 10)
        exited = time.monotonic() - signalled
        stop_sending.set()
        sender.join()
        requester.join(timeout=10)
        for thread in followers:
            thread.join(timeout=10)
    finally:
        stop_sending.set()
        if process.poll() is None:
            process.kill()
            process.communicate()
        slow_aws.slow.clear()

    log = output.decode(errors="replace")
    assert process.returncode == 0, log
    # Bounded by the setting; in practice by the slowest request in flight.
    assert exited < SHUTDOWN_SECONDS + 1.0, f"exited {exited:.1f}s after SIGTERM\n{log}"
    assert exited < SLOW_LOOKUP_SECONDS + 2.0, f"exited {exited:.1f}s after SIGTERM\n{log}"
    assert "Traceback" not in log and "cancelling" not in log, log
    # The request in flight got its whole answer (the image does not exist: 404), not a reset.
    assert in_flight == {"status": 404}, in_flight
    # Every stream ended cleanly, promptly, with the shutdown comment (clients resume with Last-Event-ID).
    for result in streams:
        assert "error" not in result, result
        assert result["status"] == 200 and ": shutting down" in result["lines"]
        assert result["ended"] - signalled < SHUTDOWN_SECONDS

    # Nothing committed was left undeleted, and nothing was lost: every event sent was either applied
    # (its id recorded) and deleted, or is still on the queue, never both.
    with sqlite3.connect(database) as connection:
        processed = {row[0] for row in connection.execute("SELECT event_id FROM processed_events")}
    time.sleep(1.5)  # anything received but not deleted becomes visible again after the 1 s visibility timeout
    remaining: set[str] = set()
    while True:
        # Each message read stays hidden while the rest are read: with the queue's 1 s timeout, a slow machine
        # would see the first ones again before the last, and this loop would never end.
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=600
        ).get("Messages", [])
        if not messages:
            break
        remaining |= {json.loads(message["Body"])["id"] for message in messages}
    assert processed, "no batch was applied before the signal"
    assert not processed & remaining, f"{len(processed & remaining)} committed but undeleted"
    assert processed | remaining == set(sent)
