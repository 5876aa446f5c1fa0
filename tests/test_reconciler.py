"""Reconciliation against the fake AWS: what it stores, what it calls, and what it records as gone."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from service.demo.fakeaws import FakeAws
from service.errors import AwsError
from service.runtime import Runtime
from service.store.tables import transitions
from service.support.clock import utcnow
from tests.conftest import REGION

pytestmark = pytest.mark.asyncio


@pytest.mark.slow
async def test_pass_stores_stacks_and_amis(runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient) -> None:
    aws_state.create_image_stack(region=REGION, image_id="building-one")
    aws_state.create_ami(region=REGION, image_id="finished-one")
    report = await runtime.reconciler.run_pass(region=REGION)
    aws_state.reset_calls()

    assert report.images_seen == 2
    for image_id in ("building-one", "finished-one"):
        response = await client.get(f"/v3/images/custom/{image_id}")
        assert response.headers["x-cache"] == "HIT"
    assert aws_state.total_calls() == 0


@pytest.mark.slow
async def test_calls_grow_with_in_progress_builds_not_with_images(runtime: Runtime, aws_state: FakeAws) -> None:
    for index in range(12):
        aws_state.create_ami(region=REGION, image_id=f"done-{index}")
    for index in range(6):
        aws_state.create_image_stack(region=REGION, image_id=f"failed-{index}", status="ROLLBACK_COMPLETE")
    aws_state.create_image_stack(region=REGION, image_id="still-building")

    first = await runtime.reconciler.run_pass(region=REGION)
    aws_state.reset_calls()
    second = await runtime.reconciler.run_pass(region=REGION)

    # First pass: 2 list calls, 2 look-ups per stack seen for the first time, 1 HeadBucket.
    assert first.aws_calls == 2 + 2 * 7 + 1
    # Then: 2 list calls, the one building stack's resource and image, 1 HeadBucket.
    assert second.aws_calls == 2 + 2 + 1
    assert aws_state.calls["cloudformation.DescribeStackResource"] == 1
    assert aws_state.calls["imagebuilder.GetImage"] == 1


@pytest.mark.slow
async def test_settling_stack_gets_one_last_image_builder_look(runtime: Runtime, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="settling", imagebuilder_status="BUILDING")
    await runtime.reconciler.run_pass(region=REGION)
    arn = aws_state.imagebuilder_arn(region=REGION, image_id="settling")
    aws_state.put_imagebuilder_image(arn, status="AVAILABLE")
    aws_state.set_stack_status(region=REGION, stack_name="settling", status="CREATE_COMPLETE")

    await runtime.reconciler.run_pass(region=REGION)
    aws_state.reset_calls()
    await runtime.reconciler.run_pass(region=REGION)

    cached = await runtime.cache.read(region=REGION, image_id="settling")
    assert cached is not None and cached.document is not None
    assert b'"imagebuilderImageStatus":"AVAILABLE"' in cached.document
    assert aws_state.calls["imagebuilder.GetImage"] == 0


@pytest.mark.slow
async def test_image_whose_stack_and_ami_vanished_is_gone(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="short-lived", status="ROLLBACK_COMPLETE")
    await runtime.reconciler.run_pass(region=REGION)
    assert (await client.get("/v3/images/custom/short-lived")).status_code == 200

    aws_state.delete_stack(region=REGION, stack_name="short-lived")
    report = await runtime.reconciler.run_pass(region=REGION)
    aws_state.reset_calls()
    response = await client.get("/v3/images/custom/short-lived")

    assert report.gone == 1
    assert response.status_code == 404
    assert response.json() == {"message": "No image or stack associated with ParallelCluster image id: short-lived."}
    assert aws_state.total_calls() == 0  # the cache knows it is gone
    async with runtime.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(transitions.c.exists, transitions.c.source).where(transitions.c.image_id == "short-lived")
            )
        ).all()
    assert [(bool(row.exists), row.source) for row in rows] == [(True, "reconcile"), (False, "reconcile")]


@pytest.mark.slow
async def test_stack_deleted_after_success_keeps_answering_from_the_ami(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="graduates", status="CREATE_COMPLETE")
    await runtime.reconciler.run_pass(region=REGION)
    aws_state.create_ami(region=REGION, image_id="graduates")
    aws_state.delete_stack(region=REGION, stack_name="graduates")

    await runtime.reconciler.run_pass(region=REGION)
    body = (await client.get("/v3/images/custom/graduates")).json()

    assert body["imageBuildStatus"] == "BUILD_COMPLETE"
    assert "ec2AmiInfo" in body


async def test_repeated_passes_change_nothing(runtime: Runtime, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="steady")
    first = await runtime.reconciler.run_pass(region=REGION)
    second = await runtime.reconciler.run_pass(region=REGION)
    assert first.changed == 1 and first.transitions == 1
    assert second.changed == 0 and second.transitions == 0


@pytest.mark.slow
async def test_failed_list_changes_nothing(runtime: Runtime, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="kept")
    await runtime.reconciler.run_pass(region=REGION)
    aws_state.fail_next("ec2.DescribeImages", code="InternalError", status=500, times=10)

    with pytest.raises(AwsError, match=r"InternalError|injected"):
        await runtime.reconciler.run_pass(region=REGION)

    cached = await runtime.cache.read(region=REGION, image_id="kept")
    assert cached is not None and cached.exists


@pytest.mark.slow
async def test_loop_runs_at_start_and_stops(runtime: Runtime, aws_state: FakeAws) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.reconciler.loop().run(stop=stop))
    await asyncio.wait_for(runtime.reconciler.first_pass_done.wait(), timeout=10)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert runtime.metrics.reconcile_passes == 1


@pytest.mark.slow
async def test_loop_backs_off_and_recovers_after_failure(runtime: Runtime, aws_state: FakeAws) -> None:
    # Every try of the first pass's first call fails (botocore retries three times).
    aws_state.fail_next("cloudformation.DescribeStacks", code="InternalFailure", status=500, times=4)
    aws_state.create_image_stack(region=REGION, image_id="eventually")
    aws_state.reset_calls()
    loop = runtime.reconciler.loop()
    backoff = await asyncio.wait_for(loop.run_once(), timeout=30)
    assert not runtime.reconciler.first_pass_done.is_set()
    assert 0 < backoff <= runtime.settings.backoff_initial_seconds
    await asyncio.wait_for(loop.run_once(), timeout=30)
    assert runtime.reconciler.first_pass_done.is_set()
    assert await runtime.cache.read(region=REGION, image_id="eventually") is not None


@pytest.mark.slow
async def test_throttled_image_builder_keeps_the_last_known_status_and_is_rechecked(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="kept-ib", imagebuilder_status="BUILDING")
    await runtime.reconciler.run_pass(region=REGION)
    aws_state.put_imagebuilder_image(aws_state.imagebuilder_arn(region=REGION, image_id="kept-ib"), status="TESTING")
    aws_state.fail_always("imagebuilder.GetImage", code="ThrottlingException", status=400)

    await runtime.reconciler.run_pass(region=REGION)
    during = await client.get("/v3/images/custom/kept-ib")

    # Not knowing is not "absent": the last known status stays, flagged as not confirmed.
    assert during.json()["imagebuilderImageStatus"] == "BUILDING"
    assert during.headers["x-cache"] == "STALE"
    aws_state.recover()
    await runtime.rechecker.run_once(now=utcnow() + timedelta(minutes=10))
    after = await client.get("/v3/images/custom/kept-ib")
    assert after.json()["imagebuilderImageStatus"] == "TESTING"
    assert after.headers["x-cache"] == "HIT"


@pytest.mark.slow
async def test_new_image_whose_image_builder_is_throttled_is_not_stored_as_complete(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="new-ib", imagebuilder_status="BUILDING")
    aws_state.fail_always("imagebuilder.GetImage", code="ThrottlingException", status=400)

    await runtime.reconciler.run_pass(region=REGION)
    during = await client.get("/v3/images/custom/new-ib")
    aws_state.recover()
    # The next pass looks again although the stack did not change: the last look failed.
    await runtime.reconciler.run_pass(region=REGION)
    after = await client.get("/v3/images/custom/new-ib")

    assert "imagebuilderImageStatus" not in during.json() and during.headers["x-cache"] == "STALE"
    assert after.json()["imagebuilderImageStatus"] == "BUILDING" and after.headers["x-cache"] == "HIT"


@pytest.mark.slow
async def test_bucket_outage_during_a_pass_is_not_stored_as_not_available(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    aws_state.create_ami(region=REGION, image_id="bucket-pass")
    aws_state.fail_always("s3.HeadBucket", code="InternalError", status=500)

    report = await runtime.reconciler.run_pass(region=REGION)
    during = await client.get("/v3/images/custom/bucket-pass")
    aws_state.recover()
    await runtime.rechecker.run_once(now=utcnow() + timedelta(minutes=10))
    after = await client.get("/v3/images/custom/bucket-pass")

    assert report.unconfirmed == 1
    assert during.json()["imageConfiguration"] == {"url": "NOT_AVAILABLE"} and during.headers["x-cache"] == "STALE"
    assert after.json()["imageConfiguration"]["url"] != "NOT_AVAILABLE" and after.headers["x-cache"] == "HIT"


@pytest.mark.slow
async def test_a_pass_counts_only_its_own_aws_calls_while_others_call_aws(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    for index in range(3):
        aws_state.create_image_stack(region=REGION, image_id=f"own-calls-{index}")
        aws_state.create_ami(region=REGION, image_id=f"own-calls-ami-{index}")
    await runtime.reconciler.run_pass(region=REGION)
    alone = await runtime.reconciler.run_pass(region=REGION)
    assert alone.aws_calls > 0
    counted_before = runtime.metrics.reconcile_aws_calls[REGION]

    # Live lookups (and anything else calling AWS) run while the next pass does: none of theirs are the pass's.
    others = 0
    passing = asyncio.create_task(runtime.reconciler.run_pass(region=REGION))
    while not passing.done():
        await runtime.aws.describe_stack(region=REGION, name="not-an-image")
        others += 1
    during = await passing

    assert others > 0
    assert during.aws_calls == alone.aws_calls
    assert runtime.metrics.reconcile_aws_calls[REGION] - counted_before == alone.aws_calls
    assert (await client.get("/stats")).json()["reconcile"][REGION]["aws_calls"] == alone.aws_calls
