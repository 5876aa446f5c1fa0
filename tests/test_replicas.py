"""Several replicas on one database: one reconciler per region, takeover, concurrent events, shared change feed."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from service.api.app import create_app
from service.aws import Aws
from service.demo.fakeaws import FakeAws
from service.domain.models import Change, Observed, Source, StackStatusPatch
from service.runtime import Runtime
from service.settings import Settings
from service.store import db
from tests.conftest import REGION, serving
from tests.test_e2e import Server, wait_until_ready
from tests.test_history import read_events

RESYNC = 2.0


def list_calls(aws: FakeAws) -> int:
    return aws.calls["cloudformation.DescribeStacks"]


def stats(server: Server) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.base}/stats", timeout=5).json()
    return body


@pytest.mark.slow
def test_one_replica_reconciles_at_a_time_and_another_takes_over_after_sigkill(
    aws_state: FakeAws, empty_postgres_url: str
) -> None:
    # PostgreSQL only: on SQLite there is one process, and no lease.
    database_url = empty_postgres_url
    aws_state.create_image_stack(region=REGION, image_id="fleet-building")
    aws_state.create_ami(region=REGION, image_id="fleet-done")
    env = {
        **os.environ,
        "STATUSCACHE_DATABASE_URL": database_url,
        "STATUSCACHE_REGIONS": REGION,
        "STATUSCACHE_RESYNC_SECONDS": str(RESYNC),
        "STATUSCACHE_LOG_LEVEL": "WARNING",
    }
    window = 6.0

    solo = Server(env=env, args=[])
    try:
        wait_until_ready(solo.base, process=solo.process)
        aws_state.reset_calls()
        time.sleep(window)
        one_replica = list_calls(aws_state)
    finally:
        solo.stop()

    first, second = Server(env=env, args=[]), Server(env=env, args=[])
    try:
        wait_until_ready(first.base, process=first.process)
        wait_until_ready(second.base, process=second.process)
        aws_state.reset_calls()
        time.sleep(window)
        two_replicas = list_calls(aws_state)

        holders = [server for server in (first, second) if stats(server)["reconcile_lease"] == [REGION]]
        assert len(holders) == 1
        holder = holders[0]
        other = second if holder is first else first

        # Both replicas answer the same bytes and ETags for the same record versions.
        for image_id in ("fleet-building", "fleet-done"):
            answers = [httpx.get(f"{server.base}/v3/images/custom/{image_id}") for server in (first, second)]
            assert answers[0].headers["etag"] == answers[1].headers["etag"]
            assert answers[0].headers["x-cache"] == answers[1].headers["x-cache"] == "HIT"
            assert answers[0].json() | {"imageConfiguration": None} == answers[1].json() | {"imageConfiguration": None}

        holder.process.send_signal(signal.SIGKILL)
        holder.process.wait(timeout=10)
        killed_at = time.monotonic()
        deadline = killed_at + RESYNC * 4
        while time.monotonic() < deadline and stats(other)["reconcile_lease"] != [REGION]:
            time.sleep(0.2)
        takeover = time.monotonic() - killed_at
        assert stats(other)["reconcile_lease"] == [REGION]
        calls_before = list_calls(aws_state)
        time.sleep(RESYNC * 1.5)
        assert list_calls(aws_state) > calls_before  # the survivor reconciles
    finally:
        first.stop()
        second.stop()

    print(f"list calls in {window}s: one replica {one_replica}, two replicas {two_replicas}; takeover {takeover:.1f}s")
    assert one_replica >= 2
    assert two_replicas <= one_replica + 1
    assert takeover <= RESYNC + 1.0


@pytest_asyncio.fixture
async def two_runtimes(settings: Settings, aws_state: FakeAws) -> AsyncIterator[tuple[Runtime, Runtime]]:
    tuned = dataclasses.replace(settings, sse_poll_seconds=0.2)
    first = Runtime.build(tuned, engine=db.create_engine(tuned), aws=Aws())
    second = Runtime.build(tuned, engine=db.create_engine(tuned), aws=Aws())
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_replicas_applying_conflicting_events_in_parallel_end_in_the_newest_state(
    two_runtimes: tuple[Runtime, Runtime], aws_state: FakeAws
) -> None:
    first, second = two_runtimes
    stack_id = aws_state.create_image_stack(region=REGION, image_id="contended")
    await first.reconciler.run_pass(region=REGION)
    base = datetime.now(UTC) + timedelta(minutes=1)
    statuses = [
        "CREATE_IN_PROGRESS", "ROLLBACK_IN_PROGRESS", "ROLLBACK_COMPLETE", "DELETE_IN_PROGRESS", "DELETE_FAILED"
    ]
    changes = [
        Change(
            region=REGION,
            image_id="contended",
            source=Source.EVENT,
            observed_at=datetime.now(UTC),
            happened_at=base + timedelta(seconds=index),
            stack_status=Observed(base + timedelta(seconds=index), StackStatusPatch(stack_id, status)),
        )
        for index, status in enumerate(statuses)
    ]
    rng = random.Random(7)
    for _ in range(5):
        # Every change delivered to both replicas, in different orders, at the same time.
        orders = [rng.sample(changes, len(changes)) for _ in range(2)]
        await asyncio.gather(
            *(runtime.cache.apply(change) for runtime, order in zip((first, second), orders, strict=True)
              for change in order)
        )
    cached = await first.cache.read(region=REGION, image_id="contended")
    assert cached is not None and cached.document is not None
    assert b'"cloudformationStackStatus":"DELETE_FAILED"' in cached.document
    again = await second.cache.read(region=REGION, image_id="contended")
    assert again is not None and again.version == cached.version


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_change_made_by_one_replica_reaches_stream_clients_of_another(
    two_runtimes: tuple[Runtime, Runtime], aws_state: FakeAws
) -> None:
    writer, streamer = two_runtimes
    async with serving(create_app(streamer.settings, runtime=streamer)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            async with http.stream("GET", "/v3/image-changes", params={"region": REGION}) as response:
                reader = asyncio.create_task(read_events(response, 1))
                await asyncio.sleep(0.3)
                aws_state.create_ami(region=REGION, image_id="from-elsewhere")
                await writer.reconciler.run_pass(region=REGION)
                received = await asyncio.wait_for(reader, timeout=10)
        assert received[0]["event"] == "image"
        assert '"imageId":"from-elsewhere"' in received[0]["data"]
