"""One Metrics per process: what the components count in it, and /stats read from it alone."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from service.demo.fakeaws import FakeAws
from service.errors import AwsThrottled, NotFound, TooManyRequests
from service.ingest.lookup import Lookup
from service.metrics import (
    CALL_NOT_FOUND,
    CALL_OK,
    CALL_THROTTLED,
    LOOKUP_BUDGET,
    LOOKUP_COALESCED,
    LOOKUP_NOT_FOUND,
    LOOKUP_OK,
    LOOKUP_THROTTLED,
    Metrics,
)
from service.runtime import Runtime
from tests.conftest import REGION

pytestmark = pytest.mark.asyncio


async def test_every_component_counts_in_the_runtimes_metrics(runtime: Runtime) -> None:
    assert runtime.aws.metrics is runtime.metrics


@pytest.mark.slow
async def test_stats_reads_the_metrics_in_the_shape_clients_know(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="stats-stack")
    await runtime.reconciler.run_once()
    await client.get("/v3/images/custom/stats-missing")

    stats = (await client.get("/stats")).json()

    assert set(stats) == {
        "live_lookups", "reconcile", "reconcile_passes", "reconcile_lease", "events", "targeted_refreshes"
    }
    assert stats["live_lookups"] == 1
    assert stats["reconcile_passes"] == 1
    assert stats["reconcile"][REGION]["images_seen"] == 1 and stats["reconcile"][REGION]["region"] == REGION
    assert (stats["events"], stats["targeted_refreshes"]) == ({}, 0)
    assert stats["reconcile_lease"] == sorted(runtime.metrics.reconcile_lease)


@pytest.mark.slow
async def test_live_lookups_are_counted_by_outcome(runtime: Runtime, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="counted")

    answers = await asyncio.gather(*(runtime.lookup.get(region=REGION, image_id="counted") for _ in range(10)))
    with pytest.raises(NotFound):
        await runtime.lookup.get(region=REGION, image_id="not-there")
    with pytest.raises(NotFound):  # remembered: no second lookup
        await runtime.lookup.get(region=REGION, image_id="not-there")

    lookups = runtime.metrics.lookups
    assert all(not answer.hit for answer in answers)
    assert (lookups[LOOKUP_OK], lookups[LOOKUP_NOT_FOUND]) == (1, 1)
    assert 1 <= lookups[LOOKUP_COALESCED] <= 9
    assert runtime.metrics.live_lookups() == 2


async def test_a_lookup_refused_by_the_budget_is_counted_apart(runtime: Runtime, aws_state: FakeAws) -> None:
    metrics = Metrics()
    one_per_second = dataclasses.replace(runtime.settings, live_lookups_per_second=1.0)
    # A clock that stands still: no token comes back however slow the first lookup is.
    lookup = Lookup(
        cache=runtime.cache, aws=runtime.aws, settings=one_per_second, metrics=metrics, clock=lambda: 1000.0
    )
    with pytest.raises(NotFound):
        await lookup.get(region=REGION, image_id="first-unknown")
    with pytest.raises(TooManyRequests):
        await lookup.get(region=REGION, image_id="second-unknown")

    assert metrics.lookups == {LOOKUP_NOT_FOUND: 1, LOOKUP_BUDGET: 1}
    assert metrics.live_lookups() == 1


@pytest.mark.slow
async def test_aws_calls_are_counted_by_operation_and_outcome(runtime: Runtime, aws_state: FakeAws) -> None:
    # botocore's own retries are inside one call: four throttled answers are one throttled call.
    aws_state.fail_next("ec2.DescribeImages", code="RequestLimitExceeded", times=4)

    with pytest.raises(AwsThrottled):
        await runtime.lookup.get(region=REGION, image_id="throttled")
    with pytest.raises(NotFound):
        await runtime.lookup.get(region=REGION, image_id="throttled")

    calls = runtime.metrics.aws_calls
    assert calls[("ec2.DescribeImages", CALL_THROTTLED)] == 1
    assert calls[("ec2.DescribeImages", CALL_OK)] == 1
    assert calls[("cloudformation.DescribeStacks", CALL_NOT_FOUND)] == 1
    assert runtime.metrics.lookups[LOOKUP_THROTTLED] == 1
    assert sum(calls.values()) == runtime.aws.total_calls()
