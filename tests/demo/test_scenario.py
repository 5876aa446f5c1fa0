import asyncio
import logging
from typing import Any

import pytest
from botocore.exceptions import ClientError

from service.demo import scenario as demo
from service.demo.fakeaws import FakeAws
from service.demo.scenario import DEMO_REGION, advance, curl_examples, run_scenario, seed, steps
from tests.demo.test_fakeaws import client, fake

AVAILABLE = {"Name": "tag:parallelcluster:build_status", "Values": ["available"]}


class SetWhenLogged(logging.Handler):
    """Sets an event when a record containing `text` is logged (from the event loop's own thread)."""

    def __init__(self, text: str, event: asyncio.Event) -> None:
        super().__init__()
        self.text = text
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


__all__ = ["fake"]  # the fixture, shared with test_fakeaws


def amis(fake: FakeAws, image_id: str) -> list[dict[str, Any]]:
    image_filter = {"Name": "tag:parallelcluster:image_id", "Values": [image_id]}
    images: list[dict[str, Any]] = client(fake, "ec2").describe_images(
        Owners=["self"], Filters=[image_filter, AVAILABLE]
    )["Images"]
    return images


def stack(fake: FakeAws, image_id: str) -> dict[str, Any] | None:
    try:
        (found,) = client(fake, "cloudformation").describe_stacks(StackName=image_id)["Stacks"]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "ValidationError"
        return None
    described: dict[str, Any] = found
    return described


def imagebuilder_state(fake: FakeAws, image_id: str) -> dict[str, str]:
    arn = client(fake, "cloudformation").describe_stack_resource(
        StackName=image_id, LogicalResourceId="ParallelClusterImage"
    )["StackResourceDetail"]["PhysicalResourceId"]
    state: dict[str, str] = client(fake, "imagebuilder").get_image(imageBuildVersionArn=arn)["image"]["state"]
    return state


def test_seed_starts_with_one_finished_image_and_three_builds(fake: FakeAws) -> None:
    image_ids = seed(fake)

    assert image_ids == [demo.FINISHED, demo.SUCCEEDS, demo.ROLLS_BACK, demo.BUILDING]
    assert len(amis(fake, demo.FINISHED)) == 1
    assert stack(fake, demo.FINISHED) is None
    for image_id in image_ids[1:]:
        assert amis(fake, image_id) == []
        described = stack(fake, image_id)
        assert described is not None
        assert described["StackStatus"] == "CREATE_IN_PROGRESS"
        assert imagebuilder_state(fake, image_id) == {"status": "BUILDING"}


def test_all_steps_leave_the_final_states(fake: FakeAws) -> None:
    seed(fake)

    done = advance(fake, elapsed=1e9, done=0)

    assert done == len(steps())
    finished = amis(fake, demo.FINISHED)
    assert len(finished) == 1
    assert stack(fake, demo.FINISHED) is None
    succeeded = amis(fake, demo.SUCCEEDS)
    assert len(succeeded) == 1
    assert succeeded[0]["State"] == "available"
    assert stack(fake, demo.SUCCEEDS) is None
    rolled_back = stack(fake, demo.ROLLS_BACK)
    assert rolled_back is not None
    assert rolled_back["StackStatus"] == "ROLLBACK_COMPLETE"
    assert rolled_back["StackStatusReason"] == demo.ROLLBACK_REASON
    failed = imagebuilder_state(fake, demo.ROLLS_BACK)
    assert failed["status"] == "FAILED"
    assert "ExecuteBash failed" in failed["reason"]
    assert amis(fake, demo.ROLLS_BACK) == []
    building = stack(fake, demo.BUILDING)
    assert building is not None
    assert building["StackStatus"] == "CREATE_IN_PROGRESS"
    assert imagebuilder_state(fake, demo.BUILDING) == {"status": "BUILDING"}


def test_success_passes_through_every_imagebuilder_status_before_the_stack_completes(fake: FakeAws) -> None:
    seed(fake)
    seen: list[tuple[str, str]] = []
    done = 0
    for at_seconds in [0.0, *(step.at_seconds for step in steps())]:
        done = advance(fake, elapsed=at_seconds, done=done)
        described = stack(fake, demo.SUCCEEDS)
        if described is not None:
            seen.append((imagebuilder_state(fake, demo.SUCCEEDS)["status"], described["StackStatus"]))

    assert list(dict.fromkeys(status for status, _ in seen)) == [
        "BUILDING",
        "TESTING",
        "DISTRIBUTING",
        "AVAILABLE",
    ]
    assert all(status == "AVAILABLE" for status, stack_status in seen if stack_status == "CREATE_COMPLETE")
    assert seen[-1] == ("AVAILABLE", "CREATE_COMPLETE")


def test_advance_applies_only_due_steps_once(fake: FakeAws) -> None:
    seed(fake)
    timeline = steps()

    assert advance(fake, elapsed=0, done=0) == 0
    first = advance(fake, elapsed=timeline[0].at_seconds, done=0)
    assert first >= 1
    assert all(step.at_seconds <= timeline[0].at_seconds for step in timeline[:first])
    assert advance(fake, elapsed=timeline[0].at_seconds, done=first) == first
    assert advance(fake, elapsed=1e9, done=first) == len(timeline)
    assert advance(fake, elapsed=1e9, done=len(timeline)) == len(timeline)


def test_steps_are_time_ordered_and_fit_in_about_three_minutes() -> None:
    timeline = steps()

    times = [step.at_seconds for step in timeline]
    assert times == sorted(times)
    assert 0 < times[0] and times[-1] <= 200
    assert all(step.description for step in timeline)
    # Pure data: another call describes the same timeline.
    assert [(s.at_seconds, s.description) for s in steps()] == [(s.at_seconds, s.description) for s in timeline]


@pytest.mark.asyncio
async def test_run_scenario_applies_every_step_then_stops_on_the_event(
    fake: FakeAws, caplog: pytest.LogCaptureFixture
) -> None:
    seed(fake)
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="service.demo.scenario")

    complete = asyncio.Event()
    watcher = SetWhenLogged("demo scenario complete", complete)
    logging.getLogger("service.demo.scenario").addHandler(watcher)
    try:
        task = asyncio.create_task(run_scenario(fake, stop=stop, speed=10_000))
        await asyncio.wait_for(complete.wait(), timeout=10)
    finally:
        logging.getLogger("service.demo.scenario").removeHandler(watcher)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, timeout=5)

    count = len(steps())
    step_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("demo t+")]
    assert len(step_lines) == count
    assert caplog.records[-1].getMessage() == f"demo scenario stopped after {count} of {count} steps"
    rolled_back = stack(fake, demo.ROLLS_BACK)
    assert rolled_back is not None
    assert rolled_back["StackStatus"] == "ROLLBACK_COMPLETE"


@pytest.mark.asyncio
async def test_run_scenario_stops_early_when_the_event_is_set(fake: FakeAws) -> None:
    seed(fake)
    stop = asyncio.Event()

    task = asyncio.create_task(run_scenario(fake, stop=stop, speed=1.0))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, timeout=2)

    described = stack(fake, demo.SUCCEEDS)
    assert described is not None
    assert described["StackStatus"] == "CREATE_IN_PROGRESS"
    assert imagebuilder_state(fake, demo.SUCCEEDS) == {"status": "BUILDING"}


def test_curl_examples_point_at_the_service() -> None:
    lines = curl_examples(base_url="http://127.0.0.1:8080/")

    assert 2 <= len(lines) <= 3
    for line in lines:
        assert line.startswith("curl ")
        assert "http://127.0.0.1:8080/v3/images/custom/" in line
        assert f"region={DEMO_REGION}" in line
    assert any(demo.FINISHED in line for line in lines)
