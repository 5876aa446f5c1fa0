"""ParallelCluster's image log operations: live while the stack and log group exist, kept evidence after."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from service.client import Client
from service.demo.fakeaws import FakeAws
from service.ingest.evidence import EvidenceCapture
from service.runtime import Runtime
from service.store import evidence as store
from service.support.clock import utcnow
from service.support.signal import ChangeSignal
from tests.conftest import LiveService

REGION = "us-east-1"
IMAGE = "failed-build"
STREAM = "3.9.0/1"
REASON = "Document arn:aws:imagebuilder:us-east-1:123456789012:component/parallelclusterimage/3.9.0/1 failed!"


def failed_build(aws: FakeAws, *, lines: int = 5) -> int:
    """A build that rolled back, with a failed resource event and a build log; the first line's time (ms)."""
    aws.create_image_stack(region=REGION, image_id=IMAGE, status="ROLLBACK_COMPLETE", reason="build failed")
    aws.add_stack_event(
        region=REGION, stack_name=IMAGE, logical_id="ParallelClusterImage", status="CREATE_FAILED", reason=REASON
    )
    start = int(time.time() * 1000) - 60_000
    aws.put_build_log(
        region=REGION, image_id=IMAGE, stream=STREAM, messages=[(start + i, f"line {i}") for i in range(lines)]
    )
    return start


def cleanup(aws: FakeAws) -> None:
    aws.delete_stack(region=REGION, stack_name=IMAGE)
    aws.delete_build_logs(region=REGION, image_id=IMAGE)


async def capture(runtime: Runtime) -> None:
    owed = store.Owed(REGION, IMAGE, utcnow() - timedelta(hours=1), "failed", utcnow())
    await store.save(runtime.cache.writer, await runtime.evidence.capture(owed))


@pytest.mark.asyncio
async def test_live_answers_are_pclusters_shapes(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    start = failed_build(aws_state)
    events = await client.get(f"/v3/images/custom/{IMAGE}/stackevents", params={"region": REGION})
    assert events.status_code == 200, events.text
    assert events.headers["x-cache"] == "MISS"
    failed = events.json()["events"][0]
    assert failed["resourceStatus"] == "CREATE_FAILED" and failed["resourceStatusReason"] == REASON
    assert failed["timestamp"].endswith("Z") and len(failed["timestamp"]) == 24
    streams = await client.get(f"/v3/images/custom/{IMAGE}/logstreams", params={"region": REGION})
    assert streams.status_code == 200
    (stream,) = streams.json()["logStreams"]
    assert stream["logStreamName"] == STREAM and "storedBytes" not in stream and "logStreamArn" in stream
    # pcluster's client percent-encodes the slash; the route takes the whole remaining path as the name.
    log = await client.get(f"/v3/images/custom/{IMAGE}/logstreams/3.9.0%2F1", params={"limit": "2"})
    assert log.status_code == 200, log.text
    body = log.json()
    assert [e["message"] for e in body["events"]] == ["line 3", "line 4"]
    assert body["nextToken"] and body["prevToken"]
    head = await client.get(f"/v3/images/custom/{IMAGE}/logstreams/{STREAM}", params={"startFromHead": "true"})
    assert head.json()["events"][0]["message"] == "line 0"
    assert head.json()["events"][0]["timestamp"].endswith("Z")
    assert start


@pytest.mark.asyncio
async def test_after_cleanup_the_kept_evidence_is_answered_as_archive(
    client: httpx.AsyncClient, runtime: Runtime, aws_state: FakeAws
) -> None:
    failed_build(aws_state)
    live = (await client.get(f"/v3/images/custom/{IMAGE}/stackevents")).json()
    live_log = (await client.get(f"/v3/images/custom/{IMAGE}/logstreams/{STREAM}")).json()
    await capture(runtime)
    cleanup(aws_state)
    events = await client.get(f"/v3/images/custom/{IMAGE}/stackevents")
    assert events.status_code == 200 and events.headers["x-cache"] == "ARCHIVE"
    assert events.json() == live
    streams = await client.get(f"/v3/images/custom/{IMAGE}/logstreams")
    assert streams.headers["x-cache"] == "ARCHIVE" and streams.json()["logStreams"][0]["logStreamName"] == STREAM
    log = await client.get(f"/v3/images/custom/{IMAGE}/logstreams/3.9.0%2F1")
    assert log.headers["x-cache"] == "ARCHIVE"
    assert log.json()["events"] == live_log["events"]
    paged = await client.get(f"/v3/images/custom/{IMAGE}/logstreams/{STREAM}", params={"limit": "2"})
    assert [e["message"] for e in paged.json()["events"]] == ["line 3", "line 4"]
    before = await client.get(
        f"/v3/images/custom/{IMAGE}/logstreams/{STREAM}", params={"limit": "2", "nextToken": paged.json()["prevToken"]}
    )
    assert [e["message"] for e in before.json()["events"]] == ["line 1", "line 2"]


@pytest.mark.asyncio
async def test_nothing_kept_and_nothing_in_aws_is_pclusters_404(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    events = await client.get("/v3/images/custom/nothing-here/stackevents")
    assert (events.status_code, events.json()) == (
        404, {"message": "CloudFormation Stack for Image nothing-here does not exist."}
    )
    streams = await client.get("/v3/images/custom/nothing-here/logstreams")
    assert (streams.status_code, streams.json()) == (
        404, {"message": "Unable to find image logs, please double check if image id=nothing-here is correct."}
    )
    log = await client.get("/v3/images/custom/nothing-here/logstreams/3.9.0%2F1")
    assert log.status_code == 404


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"startTime": "2026-01-02T00:00:00Z", "endTime": "2026-01-01T00:00:00Z"},
         "Bad Request: start_time filter must be earlier than end_time filter."),
        ({"startTime": "yesterday"},
         "Bad Request: start_time filter must be in the ISO 8601 format: YYYY-MM-DDThh:mm:ssZ. "
         "(e.g. 1984-09-15T19:20:30Z or 1984-09-15)."),
        ({"limit": "-1"}, "Bad Request: 'limit' must be a positive integer."),
    ],
)  # fmt: skip
@pytest.mark.asyncio
async def test_bad_parameters_are_refused_as_pcluster_refuses_them(
    client: httpx.AsyncClient, aws_state: FakeAws, params: dict[str, str], message: str
) -> None:
    failed_build(aws_state)
    answer = await client.get(f"/v3/images/custom/{IMAGE}/logstreams/{STREAM}", params=params)
    assert (answer.status_code, answer.json()) == (400, {"message": message})


@pytest.mark.asyncio
async def test_limit_zero_is_no_limit_as_in_pcluster(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    failed_build(aws_state)
    answer = await client.get(f"/v3/images/custom/{IMAGE}/logstreams/{STREAM}", params={"limit": "0"})
    assert answer.status_code == 200 and len(answer.json()["events"]) == 5


@pytest.mark.asyncio
async def test_a_foreign_token_on_kept_evidence_is_refused(
    client: httpx.AsyncClient, runtime: Runtime, aws_state: FakeAws
) -> None:
    failed_build(aws_state)
    await capture(runtime)
    cleanup(aws_state)
    for path in ("stackevents", "logstreams", f"logstreams/{STREAM}"):
        answer = await client.get(f"/v3/images/custom/{IMAGE}/{path}", params={"nextToken": "f/0000000000001"})
        assert (answer.status_code, answer.json()) == (
            400, {"message": "Bad Request: nextToken is not one this service issued"}
        ), path
    unknown = await client.get(f"/v3/images/custom/{IMAGE}/logstreams/no-such-stream")
    assert (unknown.status_code, unknown.json()) == (
        404, {"message": "The specified log stream no-such-stream does not exist."}
    )


def test_the_openapi_document_has_pclusters_three_operations() -> None:
    document = json.loads((Path(__file__).resolve().parent.parent / "service/api/openapi.json").read_text())
    expected = {
        "/v3/images/custom/{imageId}/stackevents": ("get_image_stack_events", "GetImageStackEventsResponseContent"),
        "/v3/images/custom/{imageId}/logstreams": ("list_image_log_streams", "ListImageLogStreamsResponseContent"),
        "/v3/images/custom/{imageId}/logstreams/{logStreamName}": (
            "get_image_log_events", "GetImageLogEventsResponseContent"
        ),
    }
    for path, (operation_id, schema) in expected.items():
        get = document["paths"][path]["get"]
        assert get["operationId"] == operation_id
        assert get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + schema)


def test_the_python_client_reads_the_three_operations(live_service: LiveService, aws_state: FakeAws) -> None:
    failed_build(aws_state)
    with Client(live_service.base_url) as api:
        events = api.get_image_stack_events(IMAGE, REGION)
        assert events["events"][0]["resource_status_reason"] == REASON
        streams = api.list_image_log_streams(IMAGE, REGION)
        assert streams["log_streams"][0]["log_stream_name"] == STREAM
        log = api.get_image_log_events(IMAGE, STREAM, REGION, start_from_head=True, limit=2)
        assert [event["message"] for event in log["events"]] == ["line 0", "line 1"]
        assert isinstance(log["events"][0]["timestamp"], datetime)
        following = api.get_image_log_events(IMAGE, STREAM, REGION, log["next_token"], start_from_head=True, limit=2)
        assert [event["message"] for event in following["events"]] == ["line 2", "line 3"]


@pytest.mark.asyncio
async def test_kept_evidence_cut_by_its_bound_says_so(
    client: httpx.AsyncClient, runtime: Runtime, aws_state: FakeAws
) -> None:
    failed_build(aws_state, lines=30)
    capture = EvidenceCapture(
        engine=runtime.engine, writer=runtime.cache.writer, aws=runtime.aws,
        settings=replace(runtime.settings, evidence_failed_max_events=10),
        transitioned=ChangeSignal(),
    )
    owed = store.Owed(REGION, IMAGE, utcnow() - timedelta(hours=1), "failed", utcnow())
    await store.save(runtime.cache.writer, await capture.capture(owed))
    cleanup(aws_state)
    log = await client.get(f"/v3/images/custom/{IMAGE}/logstreams/{STREAM}")
    assert (log.headers["x-cache"], log.headers["x-evidence-truncated"]) == ("ARCHIVE", "true")
    assert [event["message"] for event in log.json()["events"]] == [f"line {i}" for i in range(20, 30)]
    events = await client.get(f"/v3/images/custom/{IMAGE}/stackevents")
    assert "x-evidence-truncated" not in events.headers
