"""An event for an image the cache is still learning keeps its news (issue 19, item 3).

The race, forced on both databases: the first reconcile pass has listed a stack as CREATE_IN_PROGRESS and
not yet written it, AWS stops answering (all but SQS), and the stack's CREATE_COMPLETE event arrives. The
event cannot be placed (no record yet) and its look gets no answer: a recheck is owed, and the event's
news (the stack's new status, at the event's time) waits with it. Whichever commits first, the pass's
record or the event's batch, the image answers CREATE_COMPLETE as soon as both have; the recheck stays owed
for what the event could not say.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service.demo.fakeaws import FakeAws
from service.domain.models import Change
from service.domain.rows import ApplyResult
from service.runtime import Runtime
from tests.conftest import REGION
from tests.test_consumer import Queue, drain, event_clock, history, queue, stack_event, stamp

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
__all__ = ["event_clock", "queue"]  # fixtures: event times count from a minute after each test starts

IMAGES = [f"news-{index}" for index in range(5)]
# Every AWS call a targeted refresh makes (SQS, the event queue, keeps answering).
LOOKS = ("cloudformation.DescribeStacks", "ec2.DescribeImages", "imagebuilder.GetImage", "s3.HeadObject")

Apply = Callable[..., Awaitable[list[ApplyResult]]]


def aws_stops_answering(aws: FakeAws) -> None:
    for operation in LOOKS:
        aws.fail_always(operation, code="Throttling", status=400)


def completed(aws: FakeAws, stack_ids: dict[str, str]) -> list[dict[str, Any]]:
    """AWS finishes the builds; their CREATE_COMPLETE events, a minute after the pass began."""
    for image_id in IMAGES:
        aws.set_stack_status(region=REGION, stack_name=image_id, status="CREATE_COMPLETE")
    return [stack_event(stack_ids[image_id], "CREATE_COMPLETE", at=5) for image_id in IMAGES]


async def assert_news_kept(runtime: Runtime, client: httpx.AsyncClient, image_ids: Sequence[str] = IMAGES) -> None:
    for image_id in image_ids:
        response = await client.get(f"/v3/images/custom/{image_id}")
        assert response.status_code == 200, response.text
        assert response.json()["cloudformationStackStatus"] == "CREATE_COMPLETE", image_id
        # What the event could not say (the Image Builder image, tags, reasons) is still owed a look.
        assert response.headers["x-cache-stale"] == "aws-error"
        items = await history(client, image_id)
        assert (items[-1]["source"], items[-1]["cloudformationStackStatus"]) == ("event", "CREATE_COMPLETE")
        assert items[-1]["time"] == stamp(5).replace("Z", ".000Z")
    assert await runtime.rechecker.backlog() == len(image_ids)


async def test_events_before_the_first_pass_writes_are_applied_when_it_does(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack_ids = {image_id: aws_state.create_image_stack(region=REGION, image_id=image_id) for image_id in IMAGES}
    apply_many: Apply = runtime.cache.apply_many
    burst_sent = False

    async def pass_writes_after_the_burst(changes: Sequence[Change], **extra: Any) -> list[ApplyResult]:
        # The pass has listed every stack (CREATE_IN_PROGRESS); before it writes, the burst is applied.
        nonlocal burst_sent
        if not burst_sent:
            burst_sent = True
            aws_stops_answering(aws_state)
            queue.send(*completed(aws_state, stack_ids))
            await drain(runtime.consumer, queue)
            assert await runtime.rechecker.backlog() == len(IMAGES)
        return await apply_many(changes, **extra)

    monkeypatch.setattr(runtime.cache.changes, "apply_many", pass_writes_after_the_burst)
    monkeypatch.setattr(runtime.cache, "apply_many", pass_writes_after_the_burst)
    await runtime.reconciler.run_pass(region=REGION)

    assert burst_sent
    await assert_news_kept(runtime, client)


async def test_a_pass_that_writes_between_an_events_read_and_its_commit_gets_its_news(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_id = IMAGES[0]
    stack_id = aws_state.create_image_stack(region=REGION, image_id=image_id)
    refresh = runtime.consumer.refresher.refresh
    passed = False

    async def pass_commits_meanwhile(**look: Any) -> None:
        # The event was read against a cache without its image (so it asks for a look); the pass, which listed
        # the stack before the build finished, commits before the event's batch does, and AWS stops answering.
        nonlocal passed
        passed = True
        aws_state.set_stack_status(region=REGION, stack_name=image_id, status="CREATE_IN_PROGRESS")
        await runtime.reconciler.run_pass(region=REGION)
        aws_state.set_stack_status(region=REGION, stack_name=image_id, status="CREATE_COMPLETE")
        aws_stops_answering(aws_state)
        await refresh(**look)

    queue.send(stack_event(stack_id, "CREATE_COMPLETE", at=5))
    monkeypatch.setattr(runtime.consumer.refresher, "refresh", pass_commits_meanwhile)
    await drain(runtime.consumer, queue)

    assert passed
    await assert_news_kept(runtime, client, [image_id])


async def test_news_waits_for_an_image_and_goes_with_its_recheck(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    """A stack event for something that never becomes an image (a cluster's stack) keeps nothing forever."""
    stack_id = aws_state.create_image_stack(region=REGION, image_id="news-cluster")
    aws_stops_answering(aws_state)
    queue.send(stack_event(stack_id, "CREATE_COMPLETE", at=5))
    await drain(runtime.consumer, queue)
    assert await runtime.rechecker.backlog() == 1
    # AWS answers again: the stack is gone by then; the recheck settles, and its news goes with it.
    aws_state.recover()
    aws_state.delete_stack(region=REGION, stack_name="news-cluster")
    await runtime.rechecker.run_once(now=datetime.now(UTC) + timedelta(minutes=10))
    assert await runtime.rechecker.backlog() == 0
    assert (await client.get("/v3/images/custom/news-cluster")).status_code == 404
