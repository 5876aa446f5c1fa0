"""The demo played out through its events alone: the consumer keeps the cache right without reconciling."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from service.demo import scenario as demo
from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from tests.test_consumer import drain

pytestmark = pytest.mark.asyncio


class _Queue:
    def __init__(self, url: str) -> None:
        self.url = url


@pytest.mark.slow
async def test_demo_events_alone_bring_every_image_to_its_final_state(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    demo.seed(aws_state, region=demo.DEMO_REGION)
    await runtime.reconciler.run_pass(region=demo.DEMO_REGION)
    # EventBridge stamps whole seconds: let the events be clearly newer than that reconcile.
    await asyncio.sleep(1.1)
    queue_url = demo.create_queue(aws_state, region=demo.DEMO_REGION)
    publish = demo.sqs_publisher(aws_state, queue_url=queue_url, region=demo.DEMO_REGION)
    aws_state.reset_calls()

    demo.advance(aws_state, elapsed=1e9, done=0, region=demo.DEMO_REGION, publish=publish)
    await drain(runtime.consumer, _Queue(queue_url))  # type: ignore[arg-type]

    succeeded = (await client.get(f"/v3/images/custom/{demo.SUCCEEDS}")).json()
    rolled_back = (await client.get(f"/v3/images/custom/{demo.ROLLS_BACK}")).json()
    building = (await client.get(f"/v3/images/custom/{demo.BUILDING}")).json()
    assert succeeded["imageBuildStatus"] == "BUILD_COMPLETE" and "ec2AmiInfo" in succeeded
    assert rolled_back["cloudformationStackStatus"] == "ROLLBACK_COMPLETE"
    assert rolled_back["cloudformationStackStatusReason"] == demo.ROLLBACK_REASON
    assert rolled_back["imagebuilderImageStatus"] == "FAILED"
    assert building["imageBuildStatus"] == "BUILD_IN_PROGRESS"
    history = (await client.get(f"/v3/images/custom/{demo.SUCCEEDS}/history")).json()["transitions"]
    assert [item.get("imagebuilderImageStatus") for item in history] == [
        "BUILDING", "TESTING", "DISTRIBUTING", "AVAILABLE", "AVAILABLE", "AVAILABLE", None
    ]
    # Events about known images cost no AWS calls; the new AMI costs one lookup of that AMI and one refresh.
    aws_calls = {key: value for key, value in aws_state.calls.items() if not key.startswith("sqs.")}
    assert aws_calls == {"ec2.DescribeImages": 2, "s3.HeadBucket": 1}
