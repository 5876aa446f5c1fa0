"""ListImages at=T: the fleet as the cache knew it at T, consistent with describe at=T, paged like today's list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from service.demo.fakeaws import FakeAws
from service.domain.listing import FAILED_STACK_STATUSES, PENDING_STACK_STATUSES
from service.runtime import Runtime
from tests.fleet_script import WEEK, Script, at, fleet, iso

pytestmark = pytest.mark.asyncio

STATUSES = ("AVAILABLE", "PENDING", "FAILED")
IMAGES = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


@pytest_asyncio.fixture
async def scripted(runtime: Runtime, aws_state: FakeAws) -> Script:
    script, _ = fleet()
    await script.apply(runtime)
    return script


async def listed(client: httpx.AsyncClient, status: str, moment: datetime | None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params = {"imageStatus": status, **({"at": moment.isoformat()} if moment else {})}
    while True:
        response = await client.get("/v3/images/custom", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) <= {"images", "nextToken"}  # pcluster's shape
        found += body["images"]
        if "nextToken" not in body:
            return found
        params = {**params, "nextToken": body["nextToken"]}


def expected_in(status: str, document: dict[str, Any]) -> bool:
    if status == "AVAILABLE":
        return "ec2AmiInfo" in document
    stacks = PENDING_STACK_STATUSES if status == "PENDING" else FAILED_STACK_STATUSES
    return document.get("cloudformationStackStatus") in stacks


MOMENTS = [
    at(minutes) for minutes in (-1, 1, 35, 46, 61, 64, 71, 89, 96, 101, WEEK - 59, WEEK + 1, WEEK + 31, WEEK + 200)
]


@pytest.mark.parametrize("moment", MOMENTS, ids=lambda moment: moment.strftime("%dT%H:%M"))
async def test_the_list_at_a_moment_is_what_describe_at_that_moment_answered(
    scripted: Script, client: httpx.AsyncClient, aws_state: FakeAws, moment: datetime
) -> None:
    described: dict[str, dict[str, Any]] = {}
    for image_id in IMAGES:
        response = await client.get(f"/v3/images/custom/{image_id}", params={"at": moment.isoformat()})
        assert response.status_code in (200, 404)
        if response.status_code == 200:
            described[image_id] = response.json()

    for status in STATUSES:
        items = await listed(client, status, moment)
        assert [item["imageId"] for item in items] == sorted(
            image_id for image_id, document in described.items() if expected_in(status, document)
        ), status
        for item in items:
            document = described[item["imageId"]]
            assert item["imageBuildStatus"] == document["imageBuildStatus"]
            assert item["version"] == document["version"]
            if status == "AVAILABLE":
                assert item["ec2AmiInfo"] == {"amiId": document["ec2AmiInfo"]["amiId"]}
            else:
                assert item["cloudformationStackStatus"] == document["cloudformationStackStatus"]
                assert item["cloudformationStackArn"] == document["cloudformationStackArn"]
    assert aws_state.total_calls() == 0


@pytest.mark.parametrize(
    ("minutes", "truth"),
    [
        (35, {"AVAILABLE": ["hotel"], "PENDING": ["alpha", "bravo", "charlie", "delta"], "FAILED": []}),
        (64, {"AVAILABLE": ["alpha", "hotel"], "PENDING": ["bravo", "delta", "echo"], "FAILED": ["charlie"]}),
        (WEEK + 31, {"AVAILABLE": ["bravo", "delta", "hotel"], "PENDING": [], "FAILED": ["alpha", "charlie"]}),
    ],
)
async def test_the_list_at_a_moment_knows_the_scripted_truth(
    scripted: Script, client: httpx.AsyncClient, minutes: float, truth: dict[str, list[str]]
) -> None:
    for status, image_ids in truth.items():
        assert [item["imageId"] for item in await listed(client, status, at(minutes))] == image_ids, status


async def test_the_list_at_now_is_todays_list(scripted: Script, client: httpx.AsyncClient) -> None:
    now = datetime.now(UTC) + timedelta(seconds=1)
    for status in STATUSES:
        assert await listed(client, status, now) == await listed(client, status, None), status


async def test_pages_of_the_past_are_pcluster_sized_and_tokens_bound_to_their_moment(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    script = Script()
    for index in range(130):
        image_id = f"many-{index:03d}"
        script.started(image_id, index, version="3.9.0").stack(image_id, "CREATE_COMPLETE", 200).ami(image_id, 300)
    await script.apply(runtime)
    moment = at(150)  # every one started (minutes 0-129), none completed (200)

    first = (await client.get("/v3/images/custom", params={"imageStatus": "PENDING", "at": moment.isoformat()}))
    body = first.json()
    assert len(body["images"]) == 100 and "nextToken" in body and first.headers["etag"]
    rest = await client.get(
        "/v3/images/custom", params={"imageStatus": "PENDING", "at": moment.isoformat(), "nextToken": body["nextToken"]}
    )
    token = body["nextToken"]
    elsewhere = await client.get(
        "/v3/images/custom", params={"imageStatus": "PENDING", "at": at(151).isoformat(), "nextToken": token}
    )
    unsigned = await client.get("/v3/images/custom", params={"imageStatus": "PENDING", "nextToken": body["nextToken"]})
    assert [item["imageId"] for item in body["images"] + rest.json()["images"]] == [
        f"many-{index:03d}" for index in range(130)
    ]
    assert {item["cloudformationStackStatus"] for item in body["images"]} == {"CREATE_IN_PROGRESS"}
    assert elsewhere.status_code == unsigned.status_code == 400
    assert elsewhere.json() == {"message": "Bad Request: nextToken is not one this service issued"}
    again = await client.get(
        "/v3/images/custom", params={"imageStatus": "PENDING", "at": moment.isoformat()},
        headers={"If-None-Match": first.headers["etag"]},
    )
    assert again.status_code == 304


async def test_a_moment_before_the_horizon_is_answered_and_flagged(scripted: Script, client: httpx.AsyncClient) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=400)
    listing = await client.get("/v3/images/custom", params={"imageStatus": "AVAILABLE", "at": long_ago.isoformat()})
    describe = await client.get("/v3/images/custom/alpha", params={"at": long_ago.isoformat()})
    recent = await client.get("/v3/images/custom/alpha", params={"at": at(70).isoformat()})

    assert listing.status_code == 200 and listing.json() == {"images": []}
    assert listing.headers["x-history-past-horizon"] == "true" and "x-history-horizon" in listing.headers
    assert describe.status_code == 404
    assert recent.status_code == 200 and "x-history-past-horizon" not in recent.headers
    assert recent.headers["x-history-horizon"] < iso(at(0))


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "soon", "2026-13-01"])
async def test_an_unusable_moment_is_400(client: httpx.AsyncClient, value: str) -> None:
    listing = await client.get("/v3/images/custom", params={"imageStatus": "AVAILABLE", "at": value})
    describe = await client.get("/v3/images/custom/alpha", params={"at": value})
    assert listing.status_code == describe.status_code == 400
    assert "at must be an ISO 8601 timestamp" in listing.json()["message"]
