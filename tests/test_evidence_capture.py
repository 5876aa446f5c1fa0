"""Evidence capture: owed when a build ends, bounded, whole or not at all, retried when AWS does not answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy import insert

from service.demo.fakeaws import FakeAws
from service.ingest.evidence import EvidenceCapture
from service.runtime import Runtime
from service.store import evidence as store
from service.store.tables import builds
from service.support.clock import utcnow
from service.support.signal import ChangeSignal

REGION = "us-east-1"
IMAGE = "failed-build"


async def ended_build(runtime: Runtime, *, outcome: str = "failed", image_id: str = IMAGE) -> None:
    now = utcnow()
    async with runtime.engine.begin() as connection:
        await connection.execute(
            insert(builds).values(
                region=REGION, image_id=image_id, number=0, start_time=now - timedelta(hours=1),
                start_source="event", start_exact=True, end_time=now - timedelta(seconds=1), end_source="event",
                end_exact=True, duration_seconds=3599.0, outcome=outcome, phases="{}", start_week="2026-11-30",
                imagebuilder_status_reason="component failed",
            )
        )  # fmt: skip


def aws_build(aws: FakeAws, *, lines: int = 10, image_id: str = IMAGE) -> None:
    aws.create_image_stack(region=REGION, image_id=image_id, status="ROLLBACK_COMPLETE")
    aws.add_stack_event(region=REGION, stack_name=image_id, logical_id="ParallelClusterImage", status="CREATE_FAILED",
                        reason="Document failed!")
    start = int(time.time() * 1000) - 60_000
    aws.put_build_log(region=REGION, image_id=image_id, stream="3.9.0/1",
                      messages=[(start + i, f"line {i}") for i in range(lines)])


def capture_of(runtime: Runtime, clock: Callable[[], datetime] = utcnow, **knobs: object) -> EvidenceCapture:
    settings = replace(runtime.settings, **knobs)  # type: ignore[arg-type]
    return EvidenceCapture(
        engine=runtime.engine, writer=runtime.cache.writer, aws=runtime.aws, settings=settings,
        transitioned=ChangeSignal(), clock=clock,
    )


@pytest.mark.asyncio
async def test_an_ended_build_is_owed_then_captured_whole(runtime: Runtime, aws_state: FakeAws) -> None:
    aws_build(aws_state)
    await ended_build(runtime)
    capture = capture_of(runtime)
    await capture.step()
    kept = await store.read(runtime.engine, region=REGION, image_id=IMAGE)
    assert kept is not None and not kept.cut
    failed = [event for event in kept.stack_events or [] if event["resourceStatus"] == "CREATE_FAILED"]
    assert [event["resourceStatusReason"] for event in failed] == ["Document failed!"]
    assert kept.imagebuilder_reason == "component failed"
    log = await store.read_log(runtime.engine, region=REGION, image_id=IMAGE, stream="3.9.0/1")
    assert [event["message"] for event in log or []] == [f"line {i}" for i in range(10)]
    # Kept: no longer owed, so the next step makes no AWS call.
    aws_state.reset_calls()
    await capture.step()
    assert aws_state.total_calls() == 0


@pytest.mark.asyncio
async def test_a_capture_after_the_stack_was_deleted_reads_its_events_by_stack_id(
    runtime: Runtime, aws_state: FakeAws
) -> None:
    # CloudFormation answers DescribeStackEvents by stack id for 90 days after deletion, by name only before it.
    aws_build(aws_state)
    await runtime.reconciler.run_pass(region=REGION)  # the cache learns the stack's id
    await ended_build(runtime)
    aws_state.delete_stack(region=REGION, stack_name=IMAGE)
    await capture_of(runtime).step()
    kept = await store.read(runtime.engine, region=REGION, image_id=IMAGE)
    assert kept is not None and kept.stack_events is not None
    failed = [event for event in kept.stack_events if event["resourceStatus"] == "CREATE_FAILED"]
    assert [event["resourceStatusReason"] for event in failed] == ["Document failed!"]


@pytest.mark.asyncio
async def test_the_bound_keeps_the_newest_lines_and_says_it_cut(runtime: Runtime, aws_state: FakeAws) -> None:
    aws_build(aws_state, lines=30)
    await ended_build(runtime)
    await capture_of(runtime, evidence_failed_max_events=8).step()
    kept = await store.read(runtime.engine, region=REGION, image_id=IMAGE)
    assert kept is not None and kept.cut
    log = await store.read_log(runtime.engine, region=REGION, image_id=IMAGE, stream="3.9.0/1")
    assert [event["message"] for event in log or []] == [f"line {i}" for i in range(22, 30)]


@pytest.mark.asyncio
async def test_a_throttled_capture_stores_nothing_and_stays_owed(runtime: Runtime, aws_state: FakeAws) -> None:
    aws_build(aws_state)
    await ended_build(runtime)
    now = [utcnow()]
    capture = capture_of(runtime, lambda: now[0], recheck_backoff_initial_seconds=5, recheck_backoff_max_seconds=5)
    aws_state.fail_always("logs.GetLogEvents", code="ThrottlingException")
    await capture.step()
    assert await store.read(runtime.engine, region=REGION, image_id=IMAGE) is None
    assert capture.deferred == 1
    aws_state.recover()
    # Owed, not forgotten, and not asked again before its backoff is over.
    await capture.step()
    assert await store.read(runtime.engine, region=REGION, image_id=IMAGE) is None
    now[0] += timedelta(seconds=6)
    await capture.step()
    assert await store.read(runtime.engine, region=REGION, image_id=IMAGE) is not None


@pytest.mark.asyncio
async def test_a_build_in_progress_is_not_captured(runtime: Runtime, aws_state: FakeAws) -> None:
    aws_build(aws_state)
    await ended_build(runtime, outcome="in_progress")
    await capture_of(runtime).step()
    assert await store.read(runtime.engine, region=REGION, image_id=IMAGE) is None


@pytest.mark.asyncio
async def test_captures_take_their_own_budget(runtime: Runtime, aws_state: FakeAws) -> None:
    for n in range(3):
        aws_build(aws_state, image_id=f"build-{n}")
        await ended_build(runtime, image_id=f"build-{n}")
    capture = capture_of(runtime, evidence_captures_per_second=1.0)
    wait = await capture.step()
    assert capture.captured == 1 and 0 < wait <= 1.0


@pytest.mark.asyncio
async def test_kept_evidence_goes_with_the_history_retention(runtime: Runtime, aws_state: FakeAws) -> None:
    aws_build(aws_state)
    await ended_build(runtime)
    await capture_of(runtime).step()
    assert await store.prune(runtime.engine, older_than=utcnow() - timedelta(days=1)) == 0
    assert await store.prune(runtime.engine, older_than=utcnow() + timedelta(seconds=1)) == 1
    assert await store.read_log(runtime.engine, region=REGION, image_id=IMAGE, stream="3.9.0/1") is None


@pytest.mark.asyncio
async def test_image_builds_entries_say_whether_evidence_was_kept(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    aws_build(aws_state)
    await ended_build(runtime)
    before = (await client.get("/v3/image-builds", params={"imageId": IMAGE, "since": "2000-01-01T00:00:00Z"})).json()
    await capture_of(runtime).step()
    after = (await client.get("/v3/image-builds", params={"imageId": IMAGE, "since": "2000-01-01T00:00:00Z"})).json()
    assert [b["evidenceKept"] for b in before["builds"]] == [False]
    assert [b["evidenceKept"] for b in after["builds"]] == [True]


@pytest.mark.asyncio
async def test_only_the_replica_holding_the_region_captures(runtime: Runtime, aws_state: FakeAws) -> None:
    aws_build(aws_state)
    await ended_build(runtime)
    capture = capture_of(runtime)

    async def elsewhere(region: str) -> bool:
        return False

    capture.loop(region_gate=elsewhere)
    aws_state.reset_calls()
    await capture.step()
    assert aws_state.total_calls() == 0
    assert await store.read(runtime.engine, region=REGION, image_id=IMAGE) is None
