"""A list that was never filled is not an empty list (issue 19, item 2).

Until a reconcile pass (of this process or, through the database, any replica) has listed a region, its
ListImages answers 503 with Retry-After and pcluster's `{"message": ...}`, never `200 {"images": []}`;
`at=` a moment before the first listing says so too (404: that moment has no list). Once listed, a page
not confirmed by a pass for longer than the staleness bound carries `X-Cache-Stale: unconfirmed`, as
describes do; /v3/image-states names the regions not yet listed (the board says so, not "0 images").
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import delete

from service.api.app import create_app
from service.aws import Aws
from service.demo.fakeaws import FakeAws
from service.errors import AwsError
from service.runtime import Runtime
from service.settings import Settings
from service.store import db
from service.store.tables import region_listings
from tests.conftest import OTHER_REGION, REGION

pytestmark = pytest.mark.asyncio

LIST = "/v3/images/custom"


@pytest_asyncio.fixture
async def fresh(settings: Settings, aws_state: FakeAws) -> AsyncIterator[Runtime]:
    """A runtime whose poller has not run: no region listed, by it or anyone."""
    built = Runtime.build(settings, engine=db.create_engine(settings), aws=Aws())
    async with built.engine.begin() as connection:
        await connection.execute(delete(region_listings))
    try:
        yield built
    finally:
        await built.close()


def client_of(runtime: Runtime) -> httpx.AsyncClient:
    app = create_app(runtime.settings, runtime=runtime)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://statuscache")


async def test_a_region_never_listed_answers_503_not_an_empty_list(fresh: Runtime, aws_state: FakeAws) -> None:
    aws_state.create_ami(region=REGION, image_id="known-by-describe")
    async with client_of(fresh) as client:
        # A describe brings one image into the cache: still not the fleet.
        assert (await client.get(f"{LIST}/known-by-describe")).status_code == 200
        for status in ("AVAILABLE", "PENDING", "FAILED"):
            response = await client.get(LIST, params={"imageStatus": status})
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "5"
            assert response.headers["content-type"] == "application/json"
            assert list(response.json()) == ["message"]
            assert f"has not listed the images of region {REGION} yet" in response.json()["message"]
        # Bad input is still bad input first.
        assert (await client.get(LIST, params={"imageStatus": "NOPE"})).status_code == 400

        await fresh.reconciler.run_pass(region=REGION)
        listed = await client.get(LIST, params={"imageStatus": "AVAILABLE"})
        assert listed.status_code == 200
        assert [image["imageId"] for image in listed.json()["images"]] == ["known-by-describe"]
        assert "x-cache-stale" not in listed.headers
        # The other region is listed by nobody yet.
        other = await client.get(LIST, params={"imageStatus": "AVAILABLE", "region": OTHER_REGION})
        assert other.status_code == 503


async def test_a_region_listed_by_another_replica_is_listed_here(fresh: Runtime, aws_state: FakeAws) -> None:
    """The listing is in the database: a replica that has not reconciled (another holds the lease) answers."""
    aws_state.create_ami(region=REGION, image_id="listed-elsewhere")
    other = Runtime.build(fresh.settings, engine=db.create_engine(fresh.settings), aws=Aws())
    try:
        await other.reconciler.run_pass(region=REGION)
    finally:
        await other.close()
    async with client_of(fresh) as client:
        response = await client.get(LIST, params={"imageStatus": "AVAILABLE"})
    assert response.status_code == 200, response.text
    assert [image["imageId"] for image in response.json()["images"]] == ["listed-elsewhere"]


async def test_a_failed_pass_lists_nothing(fresh: Runtime, aws_state: FakeAws) -> None:
    aws_state.create_ami(region=REGION, image_id="unreachable")
    aws_state.fail_all(status=503)
    with pytest.raises(AwsError):
        await fresh.reconciler.run_pass(region=REGION)
    aws_state.recover()
    async with client_of(fresh) as client:
        assert (await client.get(LIST, params={"imageStatus": "AVAILABLE"})).status_code == 503


async def test_at_a_moment_before_the_first_listing_says_so(fresh: Runtime, aws_state: FakeAws) -> None:
    aws_state.create_ami(region=REGION, image_id="listed-later")
    before = datetime.now(UTC) - timedelta(minutes=1)
    async with client_of(fresh) as client:
        never = await client.get(LIST, params={"imageStatus": "AVAILABLE", "at": before.isoformat()})
        assert never.status_code == 503 and never.headers["retry-after"] == "5"
        await fresh.reconciler.run_pass(region=REGION)
        earlier = await client.get(LIST, params={"imageStatus": "AVAILABLE", "at": before.isoformat()})
        # That moment will never have a list: nothing to wait for.
        assert earlier.status_code == 404, earlier.text
        assert "retry-after" not in earlier.headers and list(earlier.json()) == ["message"]
        assert f"had not listed the images of region {REGION} by" in earlier.json()["message"]
        later = await client.get(
            LIST, params={"imageStatus": "AVAILABLE", "at": (datetime.now(UTC) + timedelta(seconds=1)).isoformat()}
        )
        assert later.status_code == 200, later.text
        assert [image["imageId"] for image in later.json()["images"]] == ["listed-later"]


async def test_a_list_not_confirmed_for_longer_than_the_bound_says_so(fresh: Runtime, aws_state: FakeAws) -> None:
    aws_state.create_ami(region=REGION, image_id="confirmed")
    fresh.settings = dataclasses.replace(fresh.settings, stale_after_seconds=60.0)
    # Another replica listed the region: first an hour ago, last five minutes ago (it stopped since).
    await fresh.cache.listed(region=REGION, at=datetime.now(UTC) - timedelta(hours=1))
    await fresh.cache.listed(region=REGION, at=datetime.now(UTC) - timedelta(minutes=5))
    async with client_of(fresh) as client:
        for asked in ({}, {"If-None-Match": "*"}):
            stale = await client.get(LIST, params={"imageStatus": "AVAILABLE"}, headers=asked)
            assert stale.status_code == (304 if asked else 200)
            assert stale.headers["x-cache-stale"] == "unconfirmed"
        # This process's pass confirms it: the remembered page is served without the flag at once.
        await fresh.reconciler.run_pass(region=REGION)
        confirmed = await client.get(LIST, params={"imageStatus": "AVAILABLE"})
        assert confirmed.status_code == 200 and "x-cache-stale" not in confirmed.headers
        assert [image["imageId"] for image in confirmed.json()["images"]] == ["confirmed"]


async def test_image_states_name_the_regions_not_yet_listed(fresh: Runtime, aws_state: FakeAws) -> None:
    async with client_of(fresh) as client:
        body = (await client.get("/v3/image-states")).json()
        assert body["notYetListed"] == [REGION, OTHER_REGION] and body["images"] == []
        await fresh.reconciler.run_pass(region=REGION)
        body = (await client.get("/v3/image-states", params={"region": REGION})).json()
        assert body["notYetListed"] == []
