"""History, time travel, the list endpoint and the change stream, after a full build lifecycle of events."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from tests.conftest import REGION, serving
from tests.test_consumer import Queue, ami_event, drain, event_clock, imagebuilder_event, stack_event

__all__ = ["event_clock"]  # the autouse fixture, so event times count from each test's start

pytestmark = pytest.mark.asyncio


async def lifecycle(runtime: Runtime, aws: FakeAws, queue: Queue, image_id: str) -> dict[str, datetime]:
    """Drive one image through a whole build by events; returns when each step was known."""
    marks: dict[str, datetime] = {}
    stack_id = aws.create_image_stack(region=REGION, image_id=image_id, imagebuilder_status="PENDING")
    arn = aws.imagebuilder_arn(region=REGION, image_id=image_id)

    async def deliver(mark: str, *bodies: dict[str, Any]) -> None:
        queue.send(*bodies)
        await drain(runtime.consumer, queue)
        marks[mark] = datetime.now(UTC)

    await deliver("started", stack_event(stack_id, "CREATE_IN_PROGRESS", at=1, reason="User Initiated"))
    for offset, status in ((2, "BUILDING"), (3, "TESTING"), (4, "AVAILABLE")):
        aws.put_imagebuilder_image(arn, status=status)
        await deliver(status.lower(), imagebuilder_event(arn, status, at=offset))
    aws.set_stack_status(region=REGION, stack_name=image_id, status="CREATE_COMPLETE")
    await deliver("complete", stack_event(stack_id, "CREATE_COMPLETE", at=5))
    ami_id = aws.create_ami(region=REGION, image_id=image_id)
    await deliver("ami", ami_event(ami_id, "available", at=6))
    aws.delete_stack(region=REGION, stack_name=image_id)
    await deliver("deleted", stack_event(stack_id, "DELETE_COMPLETE", at=7))
    return marks


def statuses(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            item.get("imageBuildStatus"),
            item.get("cloudformationStackStatus"),
            item.get("imagebuilderImageStatus"),
            item.get("ec2AmiState"),
        )
        for item in items
    ]


@pytest.mark.slow
async def test_history_shows_every_transition_of_a_build_once_in_order(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    queue = Queue("history-events")
    await lifecycle(runtime, aws_state, queue, "lifecycle")

    response = await client.get("/v3/images/custom/lifecycle/history")

    assert response.status_code == 200
    body = response.json()
    assert body["imageId"] == "lifecycle" and body["region"] == REGION
    assert statuses(body["transitions"]) == [
        ("BUILD_IN_PROGRESS", "CREATE_IN_PROGRESS", "PENDING", None),
        ("BUILD_IN_PROGRESS", "CREATE_IN_PROGRESS", "BUILDING", None),
        ("BUILD_IN_PROGRESS", "CREATE_IN_PROGRESS", "TESTING", None),
        ("BUILD_IN_PROGRESS", "CREATE_IN_PROGRESS", "AVAILABLE", None),
        ("BUILD_COMPLETE", "CREATE_COMPLETE", "AVAILABLE", None),
        ("BUILD_COMPLETE", "CREATE_COMPLETE", "AVAILABLE", "AVAILABLE"),
        ("BUILD_COMPLETE", None, None, "AVAILABLE"),
    ]
    assert {item["source"] for item in body["transitions"]} == {"event"}
    times = [item["time"] for item in body["transitions"]]
    assert times == sorted(times)
    assert all(item["observedTime"].endswith("Z") for item in body["transitions"])

    page = (await client.get("/v3/images/custom/lifecycle/history", params={"limit": "3"})).json()
    rest = (
        await client.get("/v3/images/custom/lifecycle/history", params={"limit": "100", "nextToken": page["nextToken"]})
    ).json()
    assert statuses(page["transitions"] + rest["transitions"]) == statuses(body["transitions"])
    assert "nextToken" not in rest


@pytest.mark.slow
async def test_at_answers_the_past(runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    marks = await lifecycle(runtime, aws_state, Queue("at-events"), "travel")

    async def at(moment: datetime) -> httpx.Response:
        return await client.get("/v3/images/custom/travel", params={"at": moment.isoformat()})

    assert (await at(before)).status_code == 404
    assert (await at(marks["building"])).json()["imagebuilderImageStatus"] == "BUILDING"
    assert (await at(marks["testing"])).json()["imagebuilderImageStatus"] == "TESTING"
    assert (await at(marks["complete"])).json()["cloudformationStackStatus"] == "CREATE_COMPLETE"
    past_ami = (await at(marks["ami"])).json()
    assert past_ami["imageBuildStatus"] == "BUILD_COMPLETE" and "ec2AmiInfo" in past_ami
    now = await client.get("/v3/images/custom/travel")
    assert (await at(datetime.now(UTC))).json() == now.json() | {"imageConfiguration": now.json()["imageConfiguration"]}


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00Z", "12:00"])
async def test_malformed_at_is_400(client: httpx.AsyncClient, value: str) -> None:
    response = await client.get("/v3/images/custom/whatever", params={"at": value})
    assert response.status_code == 400
    assert "at must be an ISO 8601 timestamp" in response.json()["message"]


async def test_history_of_an_image_never_seen_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v3/images/custom/never-seen/history")
    assert response.status_code == 404
    assert response.json() == {"message": "No image or stack associated with ParallelCluster image id: never-seen."}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "soon"}, "since must be an ISO 8601 timestamp"),
        ({"limit": "0"}, "limit must be a whole number from 1 to 1000"),
        ({"nextToken": "garbage!"}, "nextToken is not one this service issued"),
        # Found answering 500: isdigit() takes "²", int() refuses it.
        ({"limit": "\u00b2"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "1" * 40}, "limit must be a whole number from 1 to 1000"),
        # Found answering 500: the UTC form falls outside years 1-9999.
        ({"since": "0001-01-01T00:00:00+05:00"}, "since must be an ISO 8601 timestamp"),
        ({"until": "9999-12-31T23:59:59-05:00"}, "until must be an ISO 8601 timestamp"),
        # Found answering 500: tokens that decoded but were never issued.
        *[
            ({"nextToken": base64.urlsafe_b64encode(raw).decode().rstrip("=")}, "nextToken is not one this service")
            for raw in (b'{"after":"x"}', b"[1]", b"1e30", b"100000000000000000000")
        ],
        ({"region": "mars-1"}, "Bad Request: invalid or unsupported region 'mars-1'"),
    ],
)
async def test_bad_history_parameters_are_400(
    client: httpx.AsyncClient, aws_state: FakeAws, params: dict[str, str], message: str
) -> None:
    response = await client.get("/v3/images/custom/some-image/history", params=params)
    assert response.status_code == 400
    assert message in response.json()["message"]
    assert response.json()["message"].startswith("Bad Request: ")
    assert aws_state.total_calls() == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        # A misspelt parameter must not silently widen the query to all of history.
        (
            [("sinse", "2026-01-01T00:00:00Z")],
            "Bad Request: unknown query parameter 'sinse'; this route takes: region, since, until, limit, nextToken",
        ),
        (
            [("since", "2026-01-01T00:00:00Z"), ("since", "2026-02-01T00:00:00Z")],
            "Bad Request: query parameter 'since' is given more than once",
        ),
    ],
)
async def test_history_takes_only_its_own_parameters_once_each(
    client: httpx.AsyncClient, aws_state: FakeAws, params: list[tuple[str, str]], message: str
) -> None:
    response = await client.get("/v3/images/custom/some-image/history", params=params)
    assert response.status_code == 400
    assert response.json() == {"message": message}
    assert aws_state.total_calls() == 0


@pytest.mark.slow
async def test_history_tokens_page_through_and_only_continue_their_own_query(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    await lifecycle(runtime, aws_state, Queue("paged-history"), "paged")
    url = "/v3/images/custom/paged/history"
    everything = (await client.get(url)).json()["transitions"]
    seen: list[dict[str, Any]] = []
    params = {"limit": "2"}
    while True:
        page = (await client.get(url, params=params)).json()
        seen += page["transitions"]
        if "nextToken" not in page:
            break
        params = {"limit": "2", "nextToken": page["nextToken"]}
    assert seen == everything and len(everything) > 2

    first = (await client.get(url, params={"limit": "1", "since": "2000-01-01T00:00:00Z"})).json()
    token = first["nextToken"]
    # The same query spelled another way continues; another image, region or window does not.
    same = await client.get(url, params={"since": "2000-01-01T00:00:00+00:00", "nextToken": token})
    assert same.status_code == 200
    for other_url, other in (
        ("/v3/images/custom/other/history", {"since": "2000-01-01T00:00:00Z"}),
        (url, {"since": "2000-01-01T00:00:01Z"}),
        (url, {}),
        (url, {"since": "2000-01-01T00:00:00Z", "region": "eu-west-1"}),
    ):
        refused = await client.get(other_url, params={**other, "nextToken": token})
        assert refused.status_code == 400, other
        assert refused.json() == {"message": "Bad Request: nextToken is not one this service issued"}


@pytest.mark.slow
async def test_list_filters_like_pcluster_and_pages_stably(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    for index in range(5):
        aws_state.create_ami(region=REGION, image_id=f"list-ami-{index}")
    aws_state.create_image_stack(region=REGION, image_id="list-pending")
    aws_state.create_image_stack(region=REGION, image_id="list-failed", status="ROLLBACK_COMPLETE")
    await runtime.reconciler.run_pass(region=REGION)

    available = (await client.get("/v3/images/custom", params={"imageStatus": "AVAILABLE"})).json()
    pending = (await client.get("/v3/images/custom", params={"imageStatus": "PENDING"})).json()
    failed = (await client.get("/v3/images/custom", params={"imageStatus": "FAILED"})).json()

    assert [item["imageId"] for item in available["images"]] == [f"list-ami-{index}" for index in range(5)]
    assert available["images"][0] == {
        "imageId": "list-ami-0",
        "imageBuildStatus": "BUILD_COMPLETE",
        "ec2AmiInfo": {"amiId": available["images"][0]["ec2AmiInfo"]["amiId"]},
        "region": REGION,
        "version": "3.9.0",
    }
    assert [item["imageId"] for item in pending["images"]] == ["list-pending"]
    assert pending["images"][0]["cloudformationStackStatus"] == "CREATE_IN_PROGRESS"
    assert pending["images"][0]["imageBuildStatus"] == "BUILD_IN_PROGRESS"
    assert [item["imageId"] for item in failed["images"]] == ["list-failed"]


@pytest.mark.slow
async def test_list_pages_never_skip_or_repeat_while_images_change(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    from service.store import queries

    for index in range(7):
        aws_state.create_ami(region=REGION, image_id=f"page-{index}")
    await runtime.reconciler.run_pass(region=REGION)
    first = await queries.list_images(runtime.engine, region=REGION, image_status="AVAILABLE", after=None, limit=3)
    # Meanwhile an image before the cursor changes and one after it appears.
    aws_state.create_ami(region=REGION, image_id="page-5b")
    await runtime.reconciler.run_pass(region=REGION)
    seen = [item["imageId"] for item in first.images]
    cursor = first.next_after
    while cursor:
        page = await queries.list_images(runtime.engine, region=REGION, image_status="AVAILABLE", after=cursor, limit=3)
        seen += [item["imageId"] for item in page.images]
        cursor = page.next_after
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert set(seen) == {f"page-{index}" for index in range(7)} | {"page-5b"}


@pytest.mark.slow
async def test_list_etag_and_bad_filters(runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient) -> None:
    aws_state.create_ami(region=REGION, image_id="etag-list")
    await runtime.reconciler.run_pass(region=REGION)
    first = await client.get("/v3/images/custom", params={"imageStatus": "AVAILABLE"})
    again = await client.get(
        "/v3/images/custom", params={"imageStatus": "AVAILABLE"}, headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304
    # A list token continues its own filter and region only; forged ones are refused.
    for _ in range(100):
        aws_state.create_ami(region=REGION, image_id=f"etag-list-{_:03d}")
    await runtime.reconciler.run_pass(region=REGION)
    page = (await client.get("/v3/images/custom", params={"imageStatus": "AVAILABLE"})).json()
    token = page["nextToken"]
    assert (
        await client.get("/v3/images/custom", params={"imageStatus": "AVAILABLE", "nextToken": token})
    ).status_code == 200
    for params in (
        {"imageStatus": "FAILED", "nextToken": token},
        {"imageStatus": "AVAILABLE", "region": "eu-west-1", "nextToken": token},
        {"imageStatus": "AVAILABLE", "nextToken": base64.urlsafe_b64encode(b'{"after":"x"}').decode()},
        {"imageStatus": "AVAILABLE", "nextToken": token[:-1]},
    ):
        refused = await client.get("/v3/images/custom", params=params)
        assert refused.status_code == 400
        assert refused.json() == {"message": "Bad Request: nextToken is not one this service issued"}
    missing = await client.get("/v3/images/custom")
    wrong = await client.get("/v3/images/custom", params={"imageStatus": "DONE"})
    assert missing.status_code == wrong.status_code == 400
    assert missing.json() == {"message": "Bad Request: Missing query parameter 'imageStatus'"}
    assert wrong.json() == {"message": "Bad Request: 'DONE' is not one of ['AVAILABLE', 'PENDING', 'FAILED']"}


async def read_events(response: httpx.Response, count: int) -> list[dict[str, str]]:
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if "id" in current and "event" in current:
                events.append(current)
                if len(events) == count:
                    return events
            current = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(": ")
        current[key] = value
    return events


@pytest.mark.slow
async def test_change_stream_resumes_from_last_event_id_without_gaps(
    runtime: Runtime, aws_state: FakeAws
) -> None:
    runtime.settings = dataclasses.replace(runtime.settings, sse_poll_seconds=0.1)
    async with serving(create_app(runtime.settings, runtime=runtime)) as base:
        aws_state.create_image_stack(region=REGION, image_id="streamed")
        await runtime.reconciler.run_pass(region=REGION)
        aws_state.set_stack_status(region=REGION, stack_name="streamed", status="CREATE_COMPLETE")
        await runtime.reconciler.run_pass(region=REGION)

        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            async with http.stream(
                "GET", "/v3/image-changes", params={"imageId": "streamed"}, headers={"Last-Event-ID": "0"}
            ) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                replay = await read_events(response, 2)
            first_id = replay[0]["id"]
            async with http.stream(
                "GET", "/v3/image-changes", params={"imageId": "streamed"},
                headers={"Last-Event-ID": first_id},
            ) as response:
                aws_state.delete_stack(region=REGION, stack_name="streamed")
                live = asyncio.create_task(read_events(response, 2))
                await asyncio.sleep(0.3)
                await runtime.reconciler.run_pass(region=REGION)
                resumed = await asyncio.wait_for(live, timeout=10)

        import orjson

        assert [event["event"] for event in replay] == ["image", "image"]
        assert orjson.loads(replay[0]["data"])["cloudformationStackStatus"] == "CREATE_IN_PROGRESS"
        assert orjson.loads(replay[1]["data"])["cloudformationStackStatus"] == "CREATE_COMPLETE"
        # Resuming after the first event: the second again (no gap), then the live one.
        assert [event["id"] for event in resumed] == [replay[1]["id"], str(int(replay[1]["id"]) + 1)]
        assert resumed[1]["event"] == "gone"
        assert int(replay[0]["id"]) < int(replay[1]["id"])


@pytest.mark.slow
async def test_concurrent_list_requests_share_one_query(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.store import queries

    aws_state.create_ami(region=REGION, image_id="shared-page")
    await runtime.reconciler.run_pass(region=REGION)
    calls = 0
    original = queries.list_images

    async def counting(*args: Any, **kwargs: Any) -> queries.ListPage:
        nonlocal calls
        calls += 1
        return await original(*args, **kwargs)

    monkeypatch.setattr(queries, "list_images", counting)
    responses = await asyncio.gather(
        *(client.get("/v3/images/custom", params={"imageStatus": "AVAILABLE"}) for _ in range(20))
    )
    assert {response.status_code for response in responses} == {200}
    assert len({response.content for response in responses}) == 1
    assert calls == 1


@pytest.mark.slow
async def test_a_stream_opens_with_the_sequence_it_starts_after(runtime: Runtime, aws_state: FakeAws) -> None:
    # So a client that loses the connection before the first change resumes from there, missing nothing.
    aws_state.create_image_stack(region=REGION, image_id="opened")
    await runtime.reconciler.run_pass(region=REGION)
    from service.store import queries

    latest = await queries.latest_seq(runtime.engine)
    async with serving(create_app(runtime.settings, runtime=runtime)) as base, httpx.AsyncClient(base_url=base) as http:
        for headers, expected in (({}, latest), ({"Last-Event-ID": "0"}, 0)):
            async with http.stream("GET", "/v3/image-changes", headers=headers) as stream:
                lines = stream.aiter_lines()
                opening = [await anext(lines) for _ in range(3)]
            assert opening == ["retry: 2000", f"id: {expected}", ": connected"]
    assert latest > 0
