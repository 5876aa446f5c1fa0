"""A live lookup that AWS could only partly answer: answered as pcluster would, never cached as the truth, rechecked."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from service.demo.fakeaws import DEFAULT_BUCKET, FakeAws
from service.runtime import Runtime
from service.support.clock import utcnow
from tests.conftest import REGION

pytestmark = pytest.mark.asyncio

URL = "/v3/images/custom/{}"
LATER = timedelta(minutes=10)


async def describe(client: httpx.AsyncClient, image_id: str) -> httpx.Response:
    return await client.get(URL.format(image_id), params={"region": REGION})


def config_path(body: dict[str, Any]) -> str:
    url: str = body["imageConfiguration"]["url"]
    return url if url == "NOT_AVAILABLE" else urlsplit(url).path


@pytest.mark.parametrize(
    ("operation", "code", "status"),
    [
        pytest.param("imagebuilder.GetImage", "ThrottlingException", 400, id="getimage-throttled"),
        pytest.param("imagebuilder.GetImage", "InternalServerException", 500, id="getimage-5xx"),
        pytest.param("cloudformation.DescribeStackResource", "Throttling", 400, id="resource-throttled"),
    ],
)
@pytest.mark.slow
async def test_image_builder_failure_answers_degraded_but_is_not_a_hit(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime, operation: str, code: str, status: int
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="ib-fails", imagebuilder_status="BUILDING")
    aws_state.fail_always(operation, code=code, status=status)

    live = await describe(client, "ib-fails")
    again = await describe(client, "ib-fails")

    # This request is answered as pcluster would answer it: the two Image Builder fields left out.
    assert live.status_code == 200 and live.headers["x-cache"] == "MISS"
    assert "imagebuilderImageStatus" not in live.json()
    assert live.json()["cloudformationStackStatus"] == "CREATE_IN_PROGRESS"
    # ... but the degraded document is not served as the truth afterwards.
    assert again.status_code == 200
    assert again.headers["x-cache"] == "STALE"
    assert again.headers["x-cache-stale"] == "aws-error"

    aws_state.recover()
    await runtime.rechecker.run_once(now=utcnow() + LATER)
    rechecked = await describe(client, "ib-fails")

    assert rechecked.headers["x-cache"] == "HIT" and "x-cache-stale" not in rechecked.headers
    assert rechecked.json()["imagebuilderImageStatus"] == "BUILDING"


@pytest.mark.parametrize(
    ("operation", "code", "status"),
    [
        pytest.param("s3.HeadBucket", "InternalError", 500, id="headbucket-5xx"),
        pytest.param("s3.HeadBucket", "SlowDown", 503, id="headbucket-slowdown"),
    ],
)
@pytest.mark.slow
async def test_bucket_failure_answers_not_available_but_is_not_a_hit(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime, operation: str, code: str, status: int
) -> None:
    aws_state.create_ami(region=REGION, image_id="bucket-fails")
    aws_state.fail_always(operation, code=code, status=status)

    live = await describe(client, "bucket-fails")
    again = await describe(client, "bucket-fails")

    assert live.headers["x-cache"] == "MISS"
    assert live.json()["imageConfiguration"] == {"url": "NOT_AVAILABLE"}
    assert again.headers["x-cache"] == "STALE"

    aws_state.recover()
    await runtime.rechecker.run_once(now=utcnow() + LATER)
    rechecked = await describe(client, "bucket-fails")

    assert rechecked.headers["x-cache"] == "HIT"
    assert config_path(rechecked.json()).startswith(f"/{DEFAULT_BUCKET}/")


async def test_a_missing_bucket_is_a_fact_and_cached(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    aws_state.create_ami(region=REGION, image_id="bucket-gone")
    aws_state.fail_always("s3.HeadBucket", code="NoSuchBucket", status=404)

    live = await describe(client, "bucket-gone")
    cached = await describe(client, "bucket-gone")

    assert live.json()["imageConfiguration"] == {"url": "NOT_AVAILABLE"}
    assert cached.headers["x-cache"] == "HIT" and "x-cache-stale" not in cached.headers
    assert await runtime.rechecker.backlog() == 0


async def test_a_missing_image_builder_image_is_a_fact_and_cached(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="no-ib", imagebuilder_status=None)

    await describe(client, "no-ib")
    cached = await describe(client, "no-ib")

    assert cached.headers["x-cache"] == "HIT"
    assert "imagebuilderImageStatus" not in cached.json()
    assert await runtime.rechecker.backlog() == 0


@pytest.mark.slow
async def test_a_recheck_waits_while_aws_still_fails_then_succeeds(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="slow-recheck", imagebuilder_status="TESTING")
    aws_state.fail_always("imagebuilder.GetImage", code="ThrottlingException", status=400)
    await describe(client, "slow-recheck")

    still_failing = await runtime.rechecker.run_once(now=utcnow() + LATER)
    assert still_failing.failed == 1 and still_failing.settled == 0
    assert (await describe(client, "slow-recheck")).headers["x-cache"] == "STALE"

    aws_state.recover()
    rechecked = await runtime.rechecker.run_once(now=utcnow() + 2 * LATER)
    assert rechecked.settled == 1
    response = await describe(client, "slow-recheck")
    assert response.headers["x-cache"] == "HIT"
    assert response.json()["imagebuilderImageStatus"] == "TESTING"


@pytest.mark.slow
async def test_the_rechecker_loop_settles_within_seconds_of_aws_recovering(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="quick-recheck", imagebuilder_status="BUILDING")
    aws_state.fail_always("imagebuilder.GetImage", code="ThrottlingException", status=400)
    assert (await describe(client, "quick-recheck")).headers["x-cache"] == "MISS"
    stop = asyncio.Event()
    loop = asyncio.create_task(runtime.rechecker.loop().run(stop=stop))
    try:
        await asyncio.sleep(1.5)  # a few failed attempts, backing off
        aws_state.recover()
        recovered = asyncio.get_running_loop().time()
        while (await describe(client, "quick-recheck")).headers["x-cache"] != "HIT":
            assert asyncio.get_running_loop().time() - recovered < 10, "not rechecked within seconds"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(loop, timeout=5)
    assert (await describe(client, "quick-recheck")).json()["imagebuilderImageStatus"] == "BUILDING"
