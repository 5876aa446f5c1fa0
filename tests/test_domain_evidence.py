"""Pure evidence decisions: pcluster's shapes, what a bound keeps, and kept pages read as CloudWatch pages them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.domain import evidence

EVENTS = [{"timestamp": 1_000 + i, "message": f"m{i}"} for i in range(10)]


def messages(page: evidence.LogPage) -> list[str]:
    return [event["message"] for event in page.events]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_796_588_018_181, "2026-12-06T20:13:38.181Z"),
        (1_796_588_018, "2026-12-06T20:13:38.000Z"),
        (datetime(2026, 12, 6, 20, 13, 38, 181_646, tzinfo=UTC), "2026-12-06T20:13:38.181Z"),
    ],
)
def test_times_are_written_as_pcluster_writes_them(value: int | datetime, expected: str) -> None:
    assert evidence.ms_time(value) == expected


def test_a_stack_event_is_pclusters_stack_event() -> None:
    raw = {
        "StackId": "arn", "EventId": "e1", "StackName": "img", "LogicalResourceId": "ParallelClusterImage",
        "PhysicalResourceId": "", "ResourceType": "AWS::ImageBuilder::Image",
        "Timestamp": datetime(2026, 1, 1, tzinfo=UTC), "ResourceStatus": "CREATE_FAILED",
        "ResourceStatusReason": "broke", "HookType": "not pcluster's",
    }  # fmt: skip
    assert list(evidence.stack_event_document(raw).items()) == [
        ("eventId", "e1"), ("physicalResourceId", ""), ("resourceStatus", "CREATE_FAILED"),
        ("resourceStatusReason", "broke"), ("stackId", "arn"), ("stackName", "img"),
        ("logicalResourceId", "ParallelClusterImage"), ("resourceType", "AWS::ImageBuilder::Image"),
        ("timestamp", "2026-01-01T00:00:00.000Z"),
    ]  # fmt: skip


def test_a_log_stream_is_pclusters_log_stream() -> None:
    raw = {
        "logStreamName": "3.9.0/1", "creationTime": 1_000, "arn": "arn:s", "storedBytes": 3, "uploadSequenceToken": "1"
    }
    assert evidence.log_stream_document(raw) == {
        "logStreamArn": "arn:s", "creationTime": "1970-01-01T00:16:40.000Z", "logStreamName": "3.9.0/1",
        "uploadSequenceToken": "1",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expected", "tokens"),
    [
        ({}, [f"m{i}" for i in range(10)], ("f:9", "b:0")),
        ({"limit": 3}, ["m7", "m8", "m9"], ("f:9", "b:7")),
        ({"limit": 3, "start_from_head": True}, ["m0", "m1", "m2"], ("f:2", "b:0")),
        ({"limit": 3, "cursor": "b:7"}, ["m4", "m5", "m6"], ("f:6", "b:4")),
        ({"limit": 3, "cursor": "f:2"}, ["m3", "m4", "m5"], ("f:5", "b:3")),
        ({"limit": 3, "cursor": "f:9"}, [], ("f:9", "b:9")),
        ({"limit": 3, "cursor": "b:0"}, [], ("f:0", "b:0")),
        ({"start_ms": 1_002, "end_ms": 1_005}, ["m2", "m3", "m4"], ("f:2", "b:0")),
    ],
)
def test_kept_log_events_page_as_cloudwatch_pages_them(
    args: dict[str, object], expected: list[str], tokens: tuple[str, str]
) -> None:
    call: dict[str, object] = {"start_ms": None, "end_ms": None, "limit": None, "start_from_head": None, "cursor": None}
    page = evidence.log_events_page(EVENTS, **(call | args))  # type: ignore[arg-type]
    assert messages(page) == expected
    assert (page.forward, page.backward) == tokens


def test_a_bound_keeps_each_streams_newest_lines_in_turn() -> None:
    streams = {"a": EVENTS, "b": [{"timestamp": 5, "message": "only"}]}
    kept = evidence.keep_log_events(streams, evidence.Bound(max_bytes=10**6, max_events=4))
    assert kept.cut
    assert [e["message"] for e in kept.events["a"]] == ["m7", "m8", "m9"]
    assert [e["message"] for e in kept.events["b"]] == ["only"]


def test_nothing_is_cut_within_the_bound() -> None:
    kept = evidence.keep_log_events({"a": EVENTS}, evidence.Bound(max_bytes=10**6, max_events=10))
    assert not kept.cut and kept.events["a"] == EVENTS
