"""Pure: a build's evidence (stack events, log streams, log events) in ParallelCluster's shapes, what to keep of
it within a bound, and the pages of what was kept, read as CloudFormation and CloudWatch page them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from service.domain.describe import iso_time

# pcluster's names for the build's AWS resources (IMAGEBUILDER_RESOURCE_NAME_PREFIX = "ParallelClusterImage").
LOG_GROUP_PREFIX = "/aws/imagebuilder/ParallelClusterImage-"

# Key order as pcluster's models serialise (their attribute maps), keys absent from the source left out.
STACK_EVENT_KEYS = (
    "eventId", "physicalResourceId", "resourceStatus", "resourceStatusReason", "clientRequestToken",
    "resourceProperties", "stackId", "stackName", "logicalResourceId", "resourceType", "timestamp",
)  # fmt: skip
LOG_STREAM_KEYS = (
    "logStreamArn", "creationTime", "logStreamName", "firstEventTimestamp", "lastEventTimestamp",
    "lastIngestionTime", "uploadSequenceToken",
)  # fmt: skip
LOG_STREAM_TIMES = ("creationTime", "firstEventTimestamp", "lastEventTimestamp", "lastIngestionTime")

# How CloudFormation and CloudWatch page what they are asked, so kept evidence pages as they did.
STACK_EVENTS_PAGE = 100
LOG_STREAMS_PAGE = 50
LOG_EVENTS_MAX = 10_000



def log_group_name(image_id: str) -> str:
    return f"{LOG_GROUP_PREFIX}{image_id}"


def ms_time(value: int | float | datetime) -> str:
    """pcluster's `to_iso_timestr(to_utc_datetime(value))`: epoch milliseconds (or seconds) or a datetime."""
    if isinstance(value, datetime):
        return iso_time(value)
    seconds = value / 1000 if value > 1e12 else value
    return iso_time(datetime.fromtimestamp(seconds, tz=UTC))


def stack_event_document(raw: Mapping[str, Any]) -> dict[str, Any]:
    """DescribeStackEvents' event as pcluster's StackEvent: first letters lowered, the timestamp in its form."""
    lowered = {key[0].lower() + key[1:]: value for key, value in raw.items()}
    lowered["timestamp"] = ms_time(lowered["timestamp"])
    return {key: lowered[key] for key in STACK_EVENT_KEYS if lowered.get(key) is not None}


def log_stream_document(raw: Mapping[str, Any]) -> dict[str, Any]:
    """DescribeLogStreams' stream as pcluster's LogStream: `arn` named logStreamArn, no storedBytes."""
    stream = dict(raw)
    stream["logStreamArn"] = stream.pop("arn", None)
    for name in LOG_STREAM_TIMES:
        if stream.get(name) is not None:
            stream[name] = ms_time(stream[name])
    return {key: stream[key] for key in LOG_STREAM_KEYS if stream.get(key) is not None}


def log_event_document(raw: Mapping[str, Any]) -> dict[str, Any]:
    """GetLogEvents' event as pcluster's LogEvent: no ingestionTime, the timestamp in its form."""
    return {"message": raw["message"], "timestamp": ms_time(raw["timestamp"])}


@dataclass(frozen=True)
class Bound:
    """What one build may keep of its log events: bytes (as stored, see `event_cost`) and events, over all its
    streams."""

    max_bytes: int
    max_events: int


@dataclass(frozen=True)
class Kept:
    """The log events kept per stream (oldest first), and whether the bound cut any."""

    events: dict[str, list[dict[str, Any]]]
    cut: bool
    size: int


def keep_log_events(streams: Mapping[str, Sequence[Mapping[str, Any]]], bound: Bound) -> Kept:
    """The log events to keep within `bound`: each stream's newest first, since a failure is told at the end
    of its log. Streams share the bound in turn, one event at a time, so one long stream does not crowd out
    the others' last lines. Each stream's kept events are returned oldest first, as GetLogEvents orders them."""
    remaining = {name: list(events) for name, events in streams.items()}
    kept: dict[str, list[dict[str, Any]]] = {name: [] for name in streams}
    size = count = 0
    cut = False
    while any(remaining.values()):
        for name in list(remaining):
            if not remaining[name]:
                continue
            event = remaining[name][-1]
            cost = event_cost(event)
            if count + 1 > bound.max_events or size + cost > bound.max_bytes:
                cut = True
                remaining[name] = []
                continue
            remaining[name].pop()
            kept[name].append({"timestamp": event["timestamp"], "message": event["message"]})
            size += cost
            count += 1
    return Kept(events={name: events[::-1] for name, events in kept.items()}, cut=cut, size=size)


def event_cost(event: Mapping[str, Any]) -> int:
    """The bytes a kept log event takes: its JSON as stored, so the bound is what the tables hold."""
    return len(orjson.dumps({"timestamp": event["timestamp"], "message": event["message"]})) + 1


def page_of(items: Sequence[dict[str, Any]], *, start: int, size: int) -> tuple[list[dict[str, Any]], int | None]:
    """One page of kept items from index `start`, and the index the next page starts at (None: the last)."""
    end = start + size
    return list(items[start:end]), end if end < len(items) else None


@dataclass(frozen=True)
class LogPage:
    events: list[dict[str, Any]]
    # GetLogEvents' tokens as cursors: ("f", index of the last event given) and ("b", index of the first).
    forward: str
    backward: str


def log_events_page(
    events: Sequence[Mapping[str, Any]],
    *,
    start_ms: int | None,
    end_ms: int | None,
    limit: int | None,
    start_from_head: bool | None,
    cursor: str | None,
) -> LogPage:
    """GetLogEvents over kept events (oldest first): the window [start, end), `limit` events (10,000 when none),
    from the head or the tail, or continuing a cursor ("f:N" forward from N, "b:N" backward from N). An
    answer always carries both tokens, as CloudWatch's does; past either end the page is empty."""
    window = [
        event for event in events
        if (not start_ms or event["timestamp"] >= start_ms) and (not end_ms or event["timestamp"] < end_ms)
    ]  # fmt: skip
    size = limit or LOG_EVENTS_MAX
    last = len(window) - 1
    if cursor is None:
        first, end = (0, size - 1) if start_from_head else (last - size + 1, last)
    else:
        direction, _, index = cursor.partition(":")
        if direction == "f":
            first = int(index) + 1
            end = first + size - 1
        else:
            end = int(index) - 1
            first = end - size + 1
    if first < 0:
        first = 0
    elif first > last:
        return LogPage(events=[], forward=f"f:{last}", backward=f"b:{last}")
    if end > last:
        end = last
    elif end < 0:
        return LogPage(events=[], forward="f:0", backward="b:0")
    page = [log_event_document(event) for event in window[first : end + 1]]
    return LogPage(events=page, forward=f"f:{end}", backward=f"b:{first}")
