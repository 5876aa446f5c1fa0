"""GET /v3/image-transitions: the fleet's status changes in AWS-time order, paged stably, exported as NDJSON/CSV."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from service.store.tables import transitions
from tests.fleet_script import T0, WEEK, Script, at, fleet, iso

pytestmark = pytest.mark.asyncio

WINDOW = {"since": T0.isoformat(), "until": (T0 + timedelta(days=14)).isoformat()}


@pytest_asyncio.fixture
async def scripted(runtime: Runtime, aws_state: FakeAws) -> Script:
    script, _ = fleet()
    await script.apply(runtime)
    return script


async def pages(client: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    query = {**WINDOW, **params}
    while True:
        response = await client.get("/v3/image-transitions", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        found += body["transitions"]
        if "nextToken" not in body:
            return found
        query = {**query, "nextToken": body["nextToken"]}


async def stored(runtime: Runtime) -> int:
    async with runtime.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(transitions))).scalar_one())


async def test_every_transition_once_in_aws_time_order(
    scripted: Script, runtime: Runtime, client: httpx.AsyncClient, aws_state: FakeAws
) -> None:
    every = await pages(client)

    assert len(every) == await stored(runtime)
    times = [item["time"] for item in every]
    assert times == sorted(times)
    bravo = [(item.get("imagebuilderImageStatus"), item["imageBuildStatus"]) for item in every
             if item["imageId"] == "bravo"]
    # Learned after the stack completed, shown where AWS says they happened.
    assert bravo == [
        (None, "BUILD_IN_PROGRESS"), ("PENDING", "BUILD_IN_PROGRESS"), ("BUILDING", "BUILD_IN_PROGRESS"),
        ("TESTING", "BUILD_COMPLETE"), ("AVAILABLE", "BUILD_COMPLETE"), ("BUILDING", "BUILD_COMPLETE"),
        ("AVAILABLE", "BUILD_COMPLETE"),
    ]
    assert every[0] == {
        "imageId": "alpha", "region": "us-east-1", "time": iso(T0),
        "observedTime": iso(T0 + timedelta(seconds=2)),
        "source": "event", "imageBuildStatus": "BUILD_IN_PROGRESS", "cloudformationStackStatus": "CREATE_IN_PROGRESS",
        "cloudformationStackStatusReason": "User Initiated",
    }
    assert {item["imageId"] for item in every if item.get("gone")} == {"foxtrot", "alpha"}
    assert aws_state.total_calls() == 0


async def test_filters_order_and_page_size_select_the_same_rows(scripted: Script, client: httpx.AsyncClient) -> None:
    every = await pages(client)

    assert await pages(client, limit="4") == every
    assert await pages(client, order="desc", limit="5") == every[::-1]
    assert await pages(client, imageId="delta") == [item for item in every if item["imageId"] == "delta"]
    assert await pages(client, source="reconcile") == [item for item in every if item["source"] == "reconcile"]
    failed = await pages(client, imageBuildStatus="BUILD_FAILED")
    assert failed == [item for item in every if item.get("imageBuildStatus") == "BUILD_FAILED"] and failed
    first_hour = await pages(client, until=at(60).isoformat())
    rest = await pages(client, since=at(60).isoformat())
    assert first_hour + rest == every and all(item["time"] < rest[0]["time"] for item in first_hour)


async def test_paging_while_transitions_are_written_neither_skips_nor_repeats(
    scripted: Script, runtime: Runtime, client: httpx.AsyncClient
) -> None:
    before = await pages(client)
    query = {**WINDOW, "limit": "5"}
    first = (await client.get("/v3/image-transitions", params=query)).json()

    # While the client pages: a new image whose news is dated before the cursor, and a change after it.
    late = Script(stack_ids={"golf": scripted.stack_ids["golf"]}, versions={"golf": "3.10.0"})
    late.stack("golf", "CREATE_IN_PROGRESS", WEEK + 101, reason="Resource creation Initiated", observed=WEEK + 200)
    late.started("hotel2", 2, version="3.10.0")
    await late.apply(runtime)

    seen = list(first["transitions"])
    token = first["nextToken"]
    while token:
        body = (await client.get("/v3/image-transitions", params={**query, "nextToken": token})).json()
        seen += body["transitions"]
        token = body.get("nextToken")
    assert seen == before
    assert first["transitions"][-1]["time"] > iso(at(2))
    assert len(await pages(client)) == len(before) + 2  # a new session sees them


async def test_exports_stream_the_same_rows_as_ndjson_and_csv(scripted: Script, client: httpx.AsyncClient) -> None:
    every = await pages(client)

    ndjson = await client.get("/v3/image-transitions", params=WINDOW, headers={"Accept": "application/x-ndjson"})
    spreadsheet = await client.get(
        "/v3/image-transitions", params=WINDOW, headers={"Accept": "text/html;q=0.9, text/csv"}
    )

    assert ndjson.status_code == spreadsheet.status_code == 200
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    assert spreadsheet.headers["content-type"].startswith("text/csv")
    assert "x-history-horizon" in ndjson.headers
    assert [orjson.loads(line) for line in ndjson.content.splitlines()] == every
    rows = list(csv.DictReader(io.StringIO(spreadsheet.text)))
    assert [{key: value for key, value in row.items() if value} for row in rows] == [
        {key: "true" if value is True else value for key, value in item.items()} for item in every
    ]
    empty = await client.get(
        "/v3/image-transitions", params={"imageId": "nobody"}, headers={"Accept": "text/csv"}
    )
    assert empty.text.splitlines() == [",".join(("imageId", "region", "time", "observedTime", "source",
                                                 "imageBuildStatus", "cloudformationStackStatus",
                                                 "cloudformationStackStatusReason", "imagebuilderImageStatus",
                                                 "imagebuilderImageStatusReason", "ec2AmiState", "gone"))]


async def test_json_stays_the_default(scripted: Script, client: httpx.AsyncClient) -> None:
    for accept in (None, "*/*", "text/html", "application/json, application/x-ndjson;q=0.5"):
        headers = {"Accept": accept} if accept else {}
        response = await client.get("/v3/image-transitions", params={"limit": "1"}, headers=headers)
        assert response.headers["content-type"] == "application/json", accept
        assert len(response.json()["transitions"]) == 1


@pytest.mark.parametrize(
    ("params", "headers", "message"),
    [
        ({"imageBuildStatus": "FAILED"}, {}, "imageBuildStatus must be one of BUILD_IN_PROGRESS"),
        ({"source": "cloudtrail"}, {}, "source must be one of reconcile, live, event"),
        ({"imageId": "a" * 129}, {}, "is too long"),
        ({"limit": "0"}, {}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "10", "since": "yesterday"}, {}, "since must be an ISO 8601 timestamp"),
        ({"at": "2026-01-01T00:00:00Z"}, {}, "unknown query parameter 'at'"),
        ({"limit": "10"}, {"Accept": "application/x-ndjson"}, "limit pages JSON answers"),
        ({"nextToken": "x"}, {"Accept": "text/csv"}, "nextToken pages JSON answers"),
        ({"nextToken": "eyJ0IjoxfQ.AAAAAAAAAAAAAAAAAAAAAA"}, {}, "nextToken is not one this service issued"),
    ],
)
async def test_bad_parameters_are_400(
    client: httpx.AsyncClient, aws_state: FakeAws, params: dict[str, str], headers: dict[str, str], message: str
) -> None:
    response = await client.get("/v3/image-transitions", params=params, headers=headers)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
    assert aws_state.total_calls() == 0
