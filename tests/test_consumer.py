"""The event consumer through a real (moto) SQS queue: apply, de-duplicate, order, poison, crash, recheck."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import httpx
import pytest
from sqlalchemy import select

from service.aws import QueueMessage
from service.demo.fakeaws import ACCOUNT_ID, FakeAws
from service.ingest.consumer import Consumer
from service.metrics import Metrics
from service.runtime import Runtime
from service.settings import Settings
from service.store.tables import poison_messages
from tests.conftest import REGION, stored_images

pytestmark = pytest.mark.asyncio

_ids = itertools.count(1)
# Event times count from a minute after each test starts: after any reconcile the test runs first.
_event_base = [datetime.now(UTC)]


@pytest.fixture(autouse=True)
def event_clock() -> None:
    _event_base[0] = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)


def stamp(seconds: float) -> str:
    return (_event_base[0] + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def envelope(detail_type: str, source: str, *, detail: dict[str, Any], at: float, resources: list[str],
             event_id: str | None = None) -> dict[str, Any]:
    return {
        "version": "0",
        "id": event_id or f"event-{next(_ids)}",
        "detail-type": detail_type,
        "source": source,
        "account": ACCOUNT_ID,
        "time": stamp(at),
        "region": REGION,
        "resources": resources,
        "detail": detail,
    }


def stack_event(stack_id: str, status: str, *, at: float, reason: str = "", event_id: str | None = None
                ) -> dict[str, Any]:
    return envelope(
        "CloudFormation Stack Status Change", "aws.cloudformation", at=at, resources=[stack_id], event_id=event_id,
        detail={"stack-id": stack_id, "status-details": {"status": status, "status-reason": reason}},
    )


def imagebuilder_event(arn: str, status: str, *, at: float, reason: str | None = None) -> dict[str, Any]:
    state: dict[str, str] = {"status": status}
    if reason:
        state["reason"] = reason
    return envelope(
        "EC2 Image Builder Image State Change", "aws.imagebuilder", at=at, resources=[arn],
        detail={"previous-state": {"status": "PENDING"}, "state": state},
    )


def ami_event(ami_id: str, state: str, *, at: float) -> dict[str, Any]:
    return envelope(
        "EC2 AMI State Change", "aws.ec2", at=at, resources=[f"arn:aws:ec2:{REGION}::image/{ami_id}"],
        detail={"RequestId": "r", "ImageId": ami_id, "State": state, "ErrorMessage": ""},
    )


def resource_event(stack_id: str, physical_id: str, *, at: float) -> dict[str, Any]:
    return envelope(
        "CloudFormation Resource Status Change", "aws.cloudformation", at=at, resources=[stack_id],
        detail={
            "stack-id": stack_id, "logical-resource-id": "ParallelClusterImage", "physical-resource-id": physical_id,
            "resource-type": "AWS::ImageBuilder::Image",
            "status-details": {"status": "CREATE_COMPLETE", "status-reason": ""},
        },
    )


class Queue:
    def __init__(self, name: str) -> None:
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.url: str = self.sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "1"})["QueueUrl"]

    def send(self, *bodies: dict[str, Any] | str) -> None:
        for body in bodies:
            self.sqs.send_message(QueueUrl=self.url, MessageBody=body if isinstance(body, str) else json.dumps(body))

    def depth(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def queue(aws_state: FakeAws) -> Iterator[Queue]:
    yield Queue(f"events-{next(_ids)}")


async def drain(consumer: Consumer, queue: Queue) -> None:
    while await consumer.receive_once(queue_url=queue.url, wait_seconds=0):
        pass


async def describe(client: httpx.AsyncClient, image_id: str) -> dict[str, Any]:
    response = await client.get(f"/v3/images/custom/{image_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def history(client: httpx.AsyncClient, image_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v3/images/custom/{image_id}/history")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["transitions"]
    return items


async def known_building_image(runtime: Runtime, aws: FakeAws, image_id: str) -> str:
    stack_id = aws.create_image_stack(region=REGION, image_id=image_id, imagebuilder_status="BUILDING")
    await runtime.reconciler.run_pass(region=REGION)
    aws.reset_calls()
    return stack_id


@pytest.mark.slow
async def test_stack_event_for_a_known_image_is_applied_without_aws_calls(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    stack_id = await known_building_image(runtime, aws_state, "evt-stack")
    queue.send(stack_event(stack_id, "ROLLBACK_IN_PROGRESS", at=10, reason="Resource creation cancelled"))

    await drain(runtime.consumer, queue)

    body = await describe(client, "evt-stack")
    assert body["cloudformationStackStatus"] == "ROLLBACK_IN_PROGRESS"
    assert body["cloudformationStackStatusReason"] == "Resource creation cancelled"
    assert body["imageBuildStatus"] == "BUILD_FAILED"
    assert aws_state.total_calls() - aws_state.total_calls("sqs") == 0
    assert queue.depth() == 0
    last = (await history(client, "evt-stack"))[-1]
    assert last["source"] == "event"
    assert last["time"] == stamp(10).replace("Z", ".000Z")


@pytest.mark.slow
async def test_imagebuilder_event_maps_by_the_stack_resource_arn(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    await known_building_image(runtime, aws_state, "Evt-IB")  # upper case: the naming rule alone would miss it
    arn = aws_state.imagebuilder_arn(region=REGION, image_id="Evt-IB")
    queue.send(imagebuilder_event(arn, "TESTING", at=20))

    await drain(runtime.consumer, queue)

    assert (await describe(client, "Evt-IB"))["imagebuilderImageStatus"] == "TESTING"
    assert aws_state.total_calls() - aws_state.total_calls("sqs") == 0


@pytest.mark.slow
async def test_ami_events_update_state_and_deregistration_makes_it_gone(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    ami_id = aws_state.create_ami(region=REGION, image_id="evt-ami")
    await runtime.reconciler.run_pass(region=REGION)
    queue.send(ami_event(ami_id, "failed", at=20))
    await drain(runtime.consumer, queue)
    assert (await describe(client, "evt-ami"))["ec2AmiInfo"]["state"] == "FAILED"

    queue.send(ami_event(ami_id, "deregistered", at=80))
    await drain(runtime.consumer, queue)
    response = await client.get("/v3/images/custom/evt-ami")
    assert response.status_code == 404


@pytest.mark.slow
async def test_event_for_an_unknown_image_triggers_one_targeted_refresh(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    stack_id = aws_state.create_image_stack(region=REGION, image_id="evt-new", imagebuilder_status="PENDING")
    aws_state.reset_calls()
    arn = aws_state.imagebuilder_arn(region=REGION, image_id="evt-new")
    # A burst about one new image: one refresh, not one per event.
    queue.send(
        stack_event(stack_id, "CREATE_IN_PROGRESS", at=1, reason="User Initiated"),
        resource_event(stack_id, arn, at=2),
        imagebuilder_event(arn, "PENDING", at=3),
    )

    await drain(runtime.consumer, queue)

    body = await describe(client, "evt-new")
    assert body["imageBuildStatus"] == "BUILD_IN_PROGRESS"
    assert body["imagebuilderImageStatus"] == "PENDING"
    assert aws_state.calls["cloudformation.DescribeStacks"] == 1
    assert [item["source"] for item in await history(client, "evt-new")] == ["event"]


async def test_stack_events_of_other_stacks_are_not_cached(
    runtime: Runtime, aws_state: FakeAws, queue: Queue
) -> None:
    stack_id = f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/some-cluster/0000"
    queue.send(stack_event(stack_id, "CREATE_COMPLETE", at=1))
    await drain(runtime.consumer, queue)
    assert await stored_images(runtime) == 0
    assert queue.depth() == 0


@pytest.mark.slow
async def test_duplicate_event_changes_nothing(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    stack_id = await known_building_image(runtime, aws_state, "evt-dup")
    event = stack_event(stack_id, "CREATE_COMPLETE", at=20, event_id="same-event")
    queue.send(event, event)
    await drain(runtime.consumer, queue)
    queue.send(event)
    await drain(runtime.consumer, queue)

    assert runtime.metrics.events["duplicates"] == 2
    statuses = [item.get("cloudformationStackStatus") for item in await history(client, "evt-dup")]
    assert statuses == ["CREATE_IN_PROGRESS", "CREATE_COMPLETE"]


@pytest.mark.slow
async def test_older_event_does_not_overwrite_newer_state(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    stack_id = await known_building_image(runtime, aws_state, "evt-order")
    queue.send(stack_event(stack_id, "CREATE_COMPLETE", at=100))
    await drain(runtime.consumer, queue)
    queue.send(stack_event(stack_id, "CREATE_IN_PROGRESS", at=40))
    await drain(runtime.consumer, queue)

    assert (await describe(client, "evt-order"))["cloudformationStackStatus"] == "CREATE_COMPLETE"
    assert len(await history(client, "evt-order")) == 2


@pytest.mark.slow
async def test_event_older_than_the_last_reconcile_is_not_applied(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    stack_id = await known_building_image(runtime, aws_state, "evt-late")  # reconciled "now"
    queue.send(stack_event(stack_id, "CREATE_FAILED", at=-7200))  # two hours before the reconcile
    await drain(runtime.consumer, queue)
    assert (await describe(client, "evt-late"))["cloudformationStackStatus"] == "CREATE_IN_PROGRESS"


@pytest.mark.slow
async def test_unreadable_message_is_kept_counted_and_deleted(
    runtime: Runtime, aws_state: FakeAws, queue: Queue
) -> None:
    queue.send("{this is not json", {"detail-type": "EC2 AMI State Change", "detail": {}})

    await drain(runtime.consumer, queue)

    assert queue.depth() == 0
    assert runtime.metrics.events["poison"] == 2
    async with runtime.engine.connect() as connection:
        rows = (await connection.execute(select(poison_messages.c.body, poison_messages.c.reason))).all()
    assert {row.body for row in rows} >= {"{this is not json"}
    assert all(row.reason for row in rows)


async def test_unrelated_events_are_counted_and_deleted(runtime: Runtime, aws_state: FakeAws, queue: Queue) -> None:
    other = ami_event("ami-1", "available", at=1)
    other["detail-type"] = "EC2 Instance State-change Notification"
    queue.send(other)
    await drain(runtime.consumer, queue)
    assert runtime.metrics.events["ignored"] == 1
    assert queue.depth() == 0


@pytest.mark.slow
async def test_crash_between_commit_and_delete_redelivers_harmlessly(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    stack_id = await known_building_image(runtime, aws_state, "evt-crash")
    queue.send(stack_event(stack_id, "CREATE_COMPLETE", at=20))
    # The delete fails on every try (botocore retries too): as if the process died after the commit.
    aws_state.fail_next("sqs.DeleteMessageBatch", code="InternalError", status=500, times=4)
    with pytest.raises(Exception, match=r"InternalError|injected"):
        await runtime.consumer.receive_once(queue_url=queue.url, wait_seconds=0)
    before = await history(client, "evt-crash")

    # Visibility timeout (1 s) passes; the message comes back and changes nothing.
    import asyncio

    await asyncio.sleep(1.2)
    await drain(runtime.consumer, queue)

    assert runtime.metrics.events["duplicates"] == 1
    assert await history(client, "evt-crash") == before
    assert queue.depth() == 0


async def test_failed_batch_delete_entries_are_retried(runtime: Runtime) -> None:
    class FlakyDeletes:
        def __init__(self) -> None:
            self.calls: list[dict[str, str]] = []

        async def delete_messages(self, *, region: str, queue_url: str, receipt_handles: dict[str, str]) -> list[str]:
            self.calls.append(dict(receipt_handles))
            return ["1"] if len(self.calls) == 1 else []

    flaky = FlakyDeletes()
    metrics = Metrics()
    consumer = Consumer(
        cache=runtime.cache, aws=flaky, settings=runtime.settings, metrics=metrics,  # type: ignore[arg-type]
        freshness=runtime.freshness,
    )
    messages = [QueueMessage(f"m{index}", f"handle-{index}", "{}", 1) for index in range(3)]

    await consumer._delete(queue_url="https://sqs.us-east-1.amazonaws.com/1/q", messages=messages)

    assert flaky.calls == [{"0": "handle-0", "1": "handle-1", "2": "handle-2"}, {"1": "handle-1"}]
    assert metrics.events["deleted"] == 3


@pytest.mark.slow
async def test_database_down_deletes_nothing(runtime: Runtime, aws_state: FakeAws, queue: Queue) -> None:
    stack_id = await known_building_image(runtime, aws_state, "evt-dbdown")
    queue.send(stack_event(stack_id, "CREATE_COMPLETE", at=20))

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database unavailable")

    runtime.cache.apply_many = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await runtime.consumer.receive_once(queue_url=queue.url, wait_seconds=0)
    assert queue.depth() == 1


@pytest.mark.slow
async def test_lost_event_is_repaired_by_reconcile_and_counted(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    await known_building_image(runtime, aws_state, "evt-lost")
    # The stack finished but its event never arrived.
    aws_state.set_stack_status(region=REGION, stack_name="evt-lost", status="CREATE_COMPLETE")

    report = await runtime.reconciler.run_pass(region=REGION)

    assert report.corrected == 1
    assert (await describe(client, "evt-lost"))["cloudformationStackStatus"] == "CREATE_COMPLETE"
    assert (await history(client, "evt-lost"))[-1]["source"] == "reconcile"


@pytest.mark.slow
async def test_event_in_the_same_second_as_a_reconcile_is_settled_by_a_refresh(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    await known_building_image(runtime, aws_state, "evt-race")
    arn = aws_state.imagebuilder_arn(region=REGION, image_id="evt-race")
    aws_state.put_imagebuilder_image(arn, status="TESTING")
    event = imagebuilder_event(arn, "TESTING", at=0)
    # Stamped with the whole second the reconcile looked in: earlier than the look itself.
    parts = await runtime.cache.read_parts(region=REGION, image_id="evt-race")
    assert parts is not None and parts.imagebuilder is not None and parts.imagebuilder.as_of.microsecond > 0
    event["time"] = parts.imagebuilder.as_of.strftime("%Y-%m-%dT%H:%M:%SZ")
    queue.send(event)

    await drain(runtime.consumer, queue)

    assert (await describe(client, "evt-race"))["imagebuilderImageStatus"] == "TESTING"
    assert aws_state.calls["imagebuilder.GetImage"] == 1


LATER = timedelta(minutes=10)


@pytest.mark.slow
async def test_event_whose_refresh_aws_refuses_is_kept_and_applied_once_aws_answers(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    stack_id = aws_state.create_image_stack(region=REGION, image_id="evt-kept", imagebuilder_status="PENDING")
    aws_state.fail_always("ec2.DescribeImages", code="RequestLimitExceeded", status=400)
    queue.send(stack_event(stack_id, "CREATE_IN_PROGRESS", at=5, reason="User Initiated"))

    await drain(runtime.consumer, queue)

    # The message is done with (deleted), but what it told us is kept until AWS can be asked.
    assert queue.depth() == 0
    assert await stored_images(runtime) == 0
    assert await runtime.rechecker.backlog() == 1
    aws_state.recover()
    await runtime.rechecker.run_once(now=datetime.now(UTC) + LATER)
    body = await describe(client, "evt-kept")
    assert body["imageBuildStatus"] == "BUILD_IN_PROGRESS" and body["imagebuilderImageStatus"] == "PENDING"
    items = await history(client, "evt-kept")
    assert [item["source"] for item in items] == ["event"]
    assert items[0]["time"] == stamp(5).replace("Z", ".000Z")
    assert await runtime.rechecker.backlog() == 0


@pytest.mark.slow
async def test_new_image_builder_image_of_a_cached_image_is_stale_until_it_can_be_read(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    stack_id = await known_building_image(runtime, aws_state, "evt-rebuilt")
    new_arn = aws_state.imagebuilder_arn(region=REGION, image_id="evt-rebuilt", version="3.10.0")
    aws_state.put_imagebuilder_image(new_arn, status="BUILDING")
    aws_state.fail_always("cloudformation.DescribeStacks", code="Throttling", status=400)
    queue.send(resource_event(stack_id, new_arn, at=30))

    await drain(runtime.consumer, queue)
    during = await client.get("/v3/images/custom/evt-rebuilt")

    assert queue.depth() == 0
    assert during.headers["x-cache"] == "STALE" and during.headers["x-cache-stale"] == "aws-error"
    aws_state.recover()
    report = await runtime.rechecker.run_once(now=datetime.now(UTC) + LATER)
    assert report.settled == 1
    assert (await client.get("/v3/images/custom/evt-rebuilt")).headers["x-cache"] == "HIT"


@pytest.mark.slow
async def test_ami_event_that_ec2_cannot_place_is_kept_until_it_can(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    ami_id = aws_state.create_ami(region=REGION, image_id="evt-unplaced")
    aws_state.fail_always("ec2.DescribeImages", code="InternalError", status=500)
    queue.send(ami_event(ami_id, "available", at=40))

    await drain(runtime.consumer, queue)

    assert queue.depth() == 0
    assert await runtime.rechecker.backlog() == 1
    aws_state.recover()
    await runtime.rechecker.run_once(now=datetime.now(UTC) + LATER)
    assert (await describe(client, "evt-unplaced"))["imageBuildStatus"] == "BUILD_COMPLETE"
    assert await runtime.rechecker.backlog() == 0


@pytest.mark.slow
async def test_refresh_need_of_a_stack_that_is_not_an_image_is_dropped_once_aws_answers(
    runtime: Runtime, aws_state: FakeAws, queue: Queue
) -> None:
    stack_id = f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/some-cluster/0000"
    aws_state.fail_always("ec2.DescribeImages", code="InternalError", status=500)
    queue.send(stack_event(stack_id, "CREATE_COMPLETE", at=1))
    await drain(runtime.consumer, queue)
    assert await runtime.rechecker.backlog() == 1

    aws_state.recover()
    await runtime.rechecker.run_once(now=datetime.now(UTC) + LATER)

    assert await stored_images(runtime) == 0
    assert await runtime.rechecker.backlog() == 0


@pytest.mark.slow
async def test_answers_are_unconfirmed_while_the_event_queue_cannot_be_read(
    runtime: Runtime, aws_state: FakeAws, queue: Queue, client: httpx.AsyncClient
) -> None:
    import asyncio

    await known_building_image(runtime, aws_state, "evt-deaf")
    aws_state.fail_always("sqs.ReceiveMessage", code="InternalError", status=500)
    await runtime.consumer.receiver(queue_url=queue.url, stop=asyncio.Event()).run_once()
    during = await client.get("/v3/images/custom/evt-deaf")
    aws_state.recover()
    other = ami_event("ami-1", "available", at=1)
    other["detail-type"] = "EC2 Instance State-change Notification"
    queue.send(other)  # something to receive, so the long poll answers at once
    await runtime.consumer.receiver(queue_url=queue.url, stop=asyncio.Event()).run_once()
    after = await client.get("/v3/images/custom/evt-deaf")

    assert during.headers["x-cache"] == "HIT" and during.headers["x-cache-stale"] == "unconfirmed"
    assert after.headers["x-cache"] == "HIT" and "x-cache-stale" not in after.headers


async def test_the_consumer_says_what_it_did_when_the_process_stops(
    settings: Settings, queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    # The operator's record (and docker compose's restart check): the counts, once its receivers have stopped.
    queue.send("not json")
    polling = replace(settings, events_queue_urls=(queue.url,), resync_seconds=3600.0)
    with caplog.at_level(logging.INFO, logger="service.ingest.consumer"):
        async with Runtime.open(polling, poll=True) as runtime:
            for _ in range(200):
                if queue.depth() == 0:
                    break
                await asyncio.sleep(0.05)
    counts = dict(runtime.metrics.events)
    # At least once: a receiver may see the message again before the first one's delete lands.
    assert counts["received"] >= 1 and counts["poison"] >= 1, counts
    stopped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event consumer stopped: ")]
    assert stopped == [f"event consumer stopped: {counts}"]
