"""GET /metrics: parsed by prometheus-client's own parser and checked by promtool, and after a known sequence of
events (through a real queue), the image-state series and the counters say what they should."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from service.api.exposition import BUILD_STATUSES, ImageStateSeries, MetricsEndpoint
from service.demo.fakeaws import ACCOUNT_ID, FakeAws
from service.runtime import Runtime
from tests.conftest import OTHER_REGION, REGION

pytestmark = pytest.mark.asyncio

_ids = itertools.count(1)


def samples(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(text: str, name: str, **labels: str) -> float | None:
    """The one sample of `name` with exactly `labels` (among others), or None."""
    found = [s.value for s in samples(text) if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def stack_event(stack_id: str, status: str, *, at: datetime, event_id: str | None = None) -> dict[str, Any]:
    return {
        "version": "0",
        "id": event_id or f"metrics-event-{next(_ids)}",
        "detail-type": "CloudFormation Stack Status Change",
        "source": "aws.cloudformation",
        "account": ACCOUNT_ID,
        "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [stack_id],
        "detail": {"stack-id": stack_id, "status-details": {"status": status, "status-reason": "cancelled"}},
    }


class Queue:
    def __init__(self) -> None:
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.url: str = self.sqs.create_queue(QueueName=f"metrics-{next(_ids)}")["QueueUrl"]

    def send(self, *events: dict[str, Any]) -> None:
        for event in events:
            self.sqs.send_message(QueueUrl=self.url, MessageBody=json.dumps(event))


@pytest.fixture
def queue(aws_state: FakeAws) -> Iterator[Queue]:
    yield Queue()


async def drain(runtime: Runtime, queue: Queue) -> None:
    while await runtime.consumer.receive_once(queue_url=queue.url, wait_seconds=0):
        pass


def whole_second_after(moment: datetime, seconds: int) -> datetime:
    return moment.replace(microsecond=0) + timedelta(seconds=seconds)


async def test_the_exposition_is_valid_for_prometheus_clients_parser_and_promtool(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient, promtool: str
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="valid-building", imagebuilder_status="BUILDING")
    aws_state.create_ami(region=REGION, image_id="valid-done")
    await runtime.reconciler.run_once()
    await client.get("/v3/images/custom/valid-done")
    await client.get("/v3/images/custom/valid-done")

    text = await scrape(client)

    names = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "statuscache_image_build_status", "statuscache_image_info", "statuscache_image_created_timestamp_seconds",
        "statuscache_image_status_since_timestamp_seconds", "statuscache_images", "statuscache_http_requests",
        "statuscache_http_request_duration_seconds", "statuscache_aws_calls", "statuscache_live_lookups",
        "statuscache_events", "statuscache_event_lag_seconds", "statuscache_reconcile_passes",
        "statuscache_reconcile_duration_seconds", "statuscache_reconcile_aws_calls",
        "statuscache_reconcile_corrections", "statuscache_stream_clients", "statuscache_db_pool_connections_in_use",
        "process_resident_memory_bytes",
    } <= names
    checked = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().strip() == "", "promtool's lint found problems"


@pytest.mark.slow
async def test_image_series_and_counters_follow_a_known_sequence_of_events(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient, queue: Queue
) -> None:
    stack_id = aws_state.create_image_stack(region=REGION, image_id="seq-build", imagebuilder_status="BUILDING")
    aws_state.create_ami(region=REGION, image_id="seq-done", version="3.10.0")
    await runtime.reconciler.run_once()
    reconciled = datetime.now(UTC)
    created = datetime.fromisoformat(
        (await client.get("/v3/images/custom/seq-build")).json()["cloudformationStackCreationTime"]
    )

    before = await scrape(client)
    assert value(before, "statuscache_image_build_status", image_id="seq-build",
                 image_build_status="BUILD_IN_PROGRESS") == 1
    assert value(before, "statuscache_image_info", image_id="seq-build", region=REGION, version="3.9.0",
                 cloudformation_stack_status="CREATE_IN_PROGRESS", imagebuilder_image_status="BUILDING") == 1
    assert value(before, "statuscache_image_info", image_id="seq-done", version="3.10.0",
                 cloudformation_stack_status="", imagebuilder_image_status="") == 1
    assert value(before, "statuscache_images", region=REGION, image_build_status="BUILD_IN_PROGRESS") == 1
    assert value(before, "statuscache_images", region=REGION, image_build_status="BUILD_COMPLETE") == 1
    assert value(before, "statuscache_images", region=OTHER_REGION, image_build_status="BUILD_COMPLETE") == 0
    assert value(before, "statuscache_image_created_timestamp_seconds", image_id="seq-build") == pytest.approx(
        created.timestamp(), abs=0.001
    )

    # The stack rolls back (an event a second after the reconcile, applied ~0.5 s after its time), the same event
    # is delivered twice, and an older event repeats what the cache already knew.
    failed_at = whole_second_after(reconciled, 1)
    rollback = stack_event(stack_id, "ROLLBACK_IN_PROGRESS", at=failed_at)
    stale = stack_event(stack_id, "CREATE_IN_PROGRESS", at=reconciled - timedelta(minutes=5))
    await asyncio.sleep(max(0.0, (failed_at - datetime.now(UTC)).total_seconds() + 0.5))
    queue.send(rollback, rollback, stale)
    await drain(runtime, queue)

    after = await scrape(client)
    for status in BUILD_STATUSES:
        assert value(after, "statuscache_image_build_status", region=REGION, image_id="seq-build",
                     image_build_status=status) == (1 if status == "BUILD_FAILED" else 0), status
    assert value(after, "statuscache_image_info", image_id="seq-build",
                 cloudformation_stack_status="ROLLBACK_IN_PROGRESS") == 1
    assert value(after, "statuscache_image_info", image_id="seq-build",
                 cloudformation_stack_status="CREATE_IN_PROGRESS") is None
    assert value(after, "statuscache_image_status_since_timestamp_seconds", image_id="seq-build") == (
        failed_at.timestamp()
    )
    assert value(after, "statuscache_image_failure_info", region=REGION, image_id="seq-build",
                 image_build_status="BUILD_FAILED", cloudformation_stack_status_reason="cancelled",
                 imagebuilder_image_status_reason="") == 1
    assert not [s for s in samples(after) if s.name == "statuscache_image_failure_info" and s.labels["image_id"] != (
        "seq-build")]
    assert value(after, "statuscache_images", region=REGION, image_build_status="BUILD_IN_PROGRESS") == 0
    assert value(after, "statuscache_images", region=REGION, image_build_status="BUILD_FAILED") == 1
    assert value(after, "statuscache_events_total", outcome="received") == 3
    assert value(after, "statuscache_events_total", outcome="applied") == 1
    assert value(after, "statuscache_events_total", outcome="duplicates") == 1
    assert value(after, "statuscache_events_total", outcome="stale") == 1
    assert value(after, "statuscache_event_lag_seconds_count") == 1
    lag = value(after, "statuscache_event_lag_seconds_sum")
    assert lag is not None and 0.4 <= lag < 30
    assert value(after, "statuscache_reconcile_passes_total", region=REGION, outcome="ok") == 1
    assert value(after, "statuscache_reconcile_corrections_total", region=REGION) == 0
    reconcile_calls = value(after, "statuscache_reconcile_aws_calls_total", region=REGION)
    assert reconcile_calls is not None and reconcile_calls > 0
    assert value(after, "statuscache_aws_calls_total", service="cloudformation", operation="DescribeStacks",
                 outcome="ok") is not None


@pytest.mark.slow
async def test_the_fast_paths_answers_are_counted(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    aws_state.create_ami(region=REGION, image_id="fast-counted")
    aws_state.reset_calls()
    for _ in range(5):
        answer = await client.get("/v3/images/custom/fast-counted")
    await client.get("/v3/images/custom/fast-counted", headers={"If-None-Match": answer.headers["etag"]})

    text = await scrape(client)

    route = "/v3/images/custom/{image_id}"
    assert value(text, "statuscache_http_requests_total", route=route, code="200", cache="miss") == 1
    assert value(text, "statuscache_http_requests_total", route=route, code="200", cache="hit") == 4
    assert value(text, "statuscache_http_requests_total", route=route, code="304", cache="304") == 1
    assert value(text, "statuscache_http_request_duration_seconds_count", route=route) == 6
    assert value(text, "statuscache_live_lookups_total", outcome="ok") == 1
    # What the one live lookup cost at the fake is what each of the cached answers saved.
    assert value(text, "statuscache_live_lookup_aws_calls_total") == aws_state.total_calls() > 0


@pytest.mark.slow
async def test_gone_images_have_no_series(runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient) -> None:
    aws_state.create_image_stack(region=REGION, image_id="soon-gone")
    await runtime.reconciler.run_once()
    assert value(await scrape(client), "statuscache_image_info", image_id="soon-gone") == 1

    aws_state.delete_stack(region=REGION, stack_name="soon-gone")
    await runtime.reconciler.run_once()

    text = await scrape(client)
    assert not [s for s in samples(text) if s.labels.get("image_id") == "soon-gone"]
    assert value(text, "statuscache_reconcile_passes_total", region=REGION, outcome="ok") == 2


@pytest.mark.slow
async def test_a_scrape_renders_again_only_the_images_that_changed(
    runtime: Runtime, aws_state: FakeAws
) -> None:
    for index in range(5):
        aws_state.create_image_stack(region=REGION, image_id=f"memo-{index}", imagebuilder_status="BUILDING")
    await runtime.reconciler.run_once()
    series = ImageStateSeries()

    first = await series.current(runtime)
    assert series.last_rendered_images == 5
    again = await series.current(runtime)
    assert again is first, "nothing changed: the same rendering, after one aggregate query"

    aws_state.set_stack_status(region=REGION, stack_name="memo-3", status="CREATE_FAILED")
    await runtime.reconciler.run_once()
    changed = await series.current(runtime)

    assert series.last_rendered_images == 1
    assert changed.text() != first.text()
    assert b'image_id="memo-3"' in changed.text() and changed.counts[(REGION, "BUILD_FAILED")] == 1


@pytest.mark.slow
async def test_a_gzipped_scrape_is_one_gzip_stream_of_the_same_series(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    for index in range(30):
        aws_state.create_ami(region=REGION, image_id=f"zipped-{index}")
    await runtime.reconciler.run_once()
    plain = await scrape(client)

    async with client.stream("GET", "/metrics", headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    reader = zlib.decompressobj(16 + zlib.MAX_WBITS)
    text = reader.decompress(raw).decode()
    assert reader.eof and reader.unused_data == b"", "one gzip member, read to its end"
    assert len(raw) * 5 < len(text)

    def image_samples(body: str) -> list[Sample]:
        return [s for s in samples(body) if s.name.startswith("statuscache_image")]

    assert image_samples(text) == image_samples(plain)
    assert value(text, "statuscache_http_requests_total", route="/metrics", code="200", cache="none") == 1


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),  # "not gzip", though the word is there
        ("gzip;q=0, identity", False),
        ("identity", False),
        ("br", False),
    ],
)
async def test_a_scrape_is_gzipped_exactly_when_the_client_accepts_gzip(
    client: httpx.AsyncClient, accept_encoding: str, gzipped: bool
) -> None:
    async with client.stream("GET", "/metrics", headers={"Accept-Encoding": accept_encoding}) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == ("gzip" if gzipped else None)
    assert raw.startswith(b"\x1f\x8b") == gzipped


async def test_a_connected_change_stream_client_is_counted_until_it_leaves(runtime: Runtime) -> None:
    import asyncio

    from service.api.app import create_app
    from tests.conftest import serving

    assert runtime.metrics.stream_clients == 0
    async with serving(create_app(runtime.settings, runtime=runtime)) as base, httpx.AsyncClient(base_url=base) as http:
        async with http.stream("GET", "/v3/image-changes") as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == "retry: 2000"
            assert runtime.metrics.stream_clients == 1
        for _ in range(100):
            if runtime.metrics.stream_clients == 0:
                break
            await asyncio.sleep(0.02)
    assert runtime.metrics.stream_clients == 0


@pytest.mark.slow
async def test_the_endpoint_serves_the_same_image_series_on_every_replica(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    # Two endpoints stand for two replicas over one database: the image states come from it alone.
    aws_state.create_image_stack(region=REGION, image_id="replicated")
    await runtime.reconciler.run_once()
    first = MetricsEndpoint(client._transport.app.state)  # type: ignore[attr-defined]
    second = MetricsEndpoint(client._transport.app.state)  # type: ignore[attr-defined]

    one = await first.images.current(runtime)
    other = await second.images.current(runtime)

    assert one.text() == other.text() and b'image_id="replicated"' in one.text()
