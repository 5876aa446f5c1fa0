"""Parsing EventBridge envelopes: the four detail-types we read, what we ignore, what is malformed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.domain import events
from service.errors import MalformedEvent

# Copies of shared/fixtures/events, so the suite runs from any checkout.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "events"


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return loaded


def test_stack_status_change_fixture() -> None:
    event = events.parse(json.dumps(fixture("cfn-stack-status-change")))
    assert isinstance(event, events.StackStatusEvent)
    assert event.stack_name == "custom-image-id"
    assert event.status == "CREATE_COMPLETE"
    assert event.status_reason is None  # "" means no reason, as DescribeStacks shows it
    assert event.envelope.event_id == "6a7e8feb-b491-4cf7-a9f1-bf3703467718"
    assert event.envelope.time == datetime(2022, 3, 30, 23, 41, 8, tzinfo=UTC)
    assert event.envelope.region == "us-east-1"


def test_resource_status_change_fixture() -> None:
    event = events.parse(json.dumps(fixture("cfn-resource-status-change")))
    assert isinstance(event, events.ResourceStatusEvent)
    assert event.logical_id == "ParallelClusterImage"
    assert event.physical_id == (
        "arn:aws:imagebuilder:us-east-1:123456789012:image/parallelclusterimage-custom-image-id/3.2.1/1"
    )
    assert event.status == "CREATE_IN_PROGRESS"


def test_imagebuilder_state_change_fixture_maps_back_by_naming_rule() -> None:
    event = events.parse(json.dumps(fixture("imagebuilder-image-state-change")))
    assert isinstance(event, events.ImagebuilderStateEvent)
    assert event.status == "TESTING"
    assert event.reason is None
    assert event.image_id_hint == "custom-image-id"


def test_ami_state_change_fixture() -> None:
    event = events.parse(json.dumps(fixture("ec2-ami-state-change")))
    assert isinstance(event, events.AmiStateEvent)
    assert event.ami_id == "ami-0123456789abcdef0"
    assert event.state == "available"


def test_other_detail_types_are_not_ours() -> None:
    raw = fixture("ec2-ami-state-change")
    raw["detail-type"] = "EC2 Instance State-change Notification"
    assert isinstance(events.parse(json.dumps(raw)), events.NotOurs)


def test_imagebuilder_images_of_others_are_not_ours() -> None:
    raw = fixture("imagebuilder-image-state-change")
    raw["resources"] = ["arn:aws:imagebuilder:us-east-1:123456789012:image/my-own-pipeline/1.0.0/3"]
    assert isinstance(events.parse(json.dumps(raw)), events.NotOurs)


def _broken(name: str, mutate: Any) -> str:
    raw = fixture(name)
    mutate(raw)
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json at all", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (_broken("cfn-stack-status-change", lambda raw: raw.pop("detail")), "detail"),
        (_broken("cfn-stack-status-change", lambda raw: raw.pop("id")), "id"),
        (_broken("cfn-stack-status-change", lambda raw: raw.update(time="yesterday")), "time"),
        (_broken("cfn-stack-status-change", lambda raw: raw["detail"].update({"stack-id": "nope"})), "stack ARN"),
        (_broken("cfn-stack-status-change", lambda raw: raw["detail"].pop("status-details")), "status-details"),
        (_broken("imagebuilder-image-state-change", lambda raw: raw.update(resources=[])), "resources"),
        (_broken("ec2-ami-state-change", lambda raw: raw["detail"].pop("State")), "State"),
    ],
)
def test_malformed_messages_say_why(body: str, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        events.parse(body)
