"""Event to describe: how long a state change delivered through SQS takes to show, and what AWS calls it costs."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass

import boto3
import httpx

from service.demo.fakeaws import FakeAws
from service.demo.scenario import envelope

REGION = "us-east-1"
# Image Builder states a build walks through; each step is one event.
WALK = ("BUILDING", "TESTING", "DISTRIBUTING", "INTEGRATING", "AVAILABLE")


@dataclass(frozen=True)
class EventTiming:
    events: int
    median_ms: float
    worst_ms: float
    aws_calls_per_known_event: float
    new_image_aws_calls: int
    new_image_ms: float


def _envelope(detail_type: str, source: str, resources: list[str], detail: dict[str, object]) -> str:
    return json.dumps(
        envelope(detail_type=detail_type, source=source, region=REGION, resources=resources, detail=detail)
    )


def create_queue(fake: FakeAws, name: str) -> str:
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=fake.endpoint_url)
    url: str = sqs.create_queue(QueueName=name)["QueueUrl"]
    return url


def prepare_images(fake: FakeAws, *, count: int, prefix: str) -> list[str]:
    ids = [f"{prefix}-{index:03d}" for index in range(count)]
    for image_id in ids:
        fake.create_image_stack(region=REGION, image_id=image_id, imagebuilder_status="PENDING")
    return ids


def _wait_for(client: httpx.Client, image_id: str, predicate_key: str, expected: str, *, timeout: float) -> float:
    started = time.perf_counter()
    while True:
        response = client.get(f"/v3/images/custom/{image_id}", params={"region": REGION})
        if response.status_code == 200 and response.json().get(predicate_key) == expected:
            return (time.perf_counter() - started) * 1000
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{image_id}: {predicate_key} never became {expected} within {timeout}s")
        time.sleep(0.002)


def event_latency(fake: FakeAws, *, base: str, queue_url: str, image_ids: list[str], new_image: str) -> EventTiming:
    """Walk every image through Image Builder states by events alone; time each from send to describe."""
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=fake.endpoint_url)
    latencies: list[float] = []
    with httpx.Client(base_url=base, timeout=10.0) as client:
        for image_id in image_ids:  # known to the cache: the start-up reconcile stored them
            _wait_for(client, image_id, "imagebuilderImageStatus", "PENDING", timeout=30)
        # EventBridge stamps whole seconds: start in a later second than that reconcile's look.
        time.sleep(1.1)
        calls_before = fake.total_calls() - fake.total_calls("sqs")
        for status in WALK:
            for image_id in image_ids:
                arn = fake.imagebuilder_arn(region=REGION, image_id=image_id)
                fake.put_imagebuilder_image(arn, status=status)
                sent = time.perf_counter()
                sqs.send_message(
                    QueueUrl=queue_url,
                    MessageBody=_envelope(
                        "EC2 Image Builder Image State Change", "aws.imagebuilder", [arn], {"state": {"status": status}}
                    ),
                )
                _wait_for(client, image_id, "imagebuilderImageStatus", status, timeout=10)
                latencies.append((time.perf_counter() - sent) * 1000)
        known_calls = fake.total_calls() - fake.total_calls("sqs") - calls_before

        # A build the cache has never seen: its first event costs one targeted refresh.
        stack_id = fake.create_image_stack(region=REGION, image_id=new_image, imagebuilder_status="BUILDING")
        calls_before = fake.total_calls() - fake.total_calls("sqs")
        sent = time.perf_counter()
        sqs.send_message(
            QueueUrl=queue_url,
            MessageBody=_envelope(
                "CloudFormation Stack Status Change", "aws.cloudformation", [stack_id],
                {"stack-id": stack_id, "status-details": {"status": "CREATE_IN_PROGRESS", "status-reason": ""}},
            ),
        )
        # Poll the history, not describe: a describe of an image the cache does not know would itself
        # look it up live and hide what the event cost.
        while client.get(f"/v3/images/custom/{new_image}/history", params={"region": REGION}).status_code != 200:
            if time.perf_counter() - sent > 10:
                raise RuntimeError(f"{new_image}: the event never reached the cache")
            time.sleep(0.002)
        new_ms = (time.perf_counter() - sent) * 1000
        _wait_for(client, new_image, "cloudformationStackStatus", "CREATE_IN_PROGRESS", timeout=1)
        new_calls = fake.total_calls() - fake.total_calls("sqs") - calls_before
    return EventTiming(
        events=len(latencies),
        median_ms=statistics.median(latencies),
        worst_ms=max(latencies),
        aws_calls_per_known_event=known_calls / len(latencies),
        new_image_aws_calls=new_calls,
        new_image_ms=new_ms,
    )
