"""pcluster's ListImages: the entries (the AMI's summary for AVAILABLE, the stack's for PENDING and FAILED), and
the route's pages: pcluster's bytes, prepared once, an ETag that follows the bytes, rebuilt behind the clients."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from service.domain import status
from service.domain.listing import FAILED_STACK_STATUSES, IMAGE_STATUS_FILTERS, PENDING_STACK_STATUSES, summary
from service.domain.models import AmiInfo, Change, ConfigLocation, Observed, Source, StackInfo
from service.domain.records import Parts
from service.runtime import Runtime
from service.store import queries

T = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
STACK_ID = "arn:aws:cloudformation:us-east-1:123456789012:stack/img/1"


def parts(*, stack_status: str | None = None, ami: bool = False, version: str | None = "3.9.0") -> Parts:
    tags = (("parallelcluster:version", version),) if version else ()
    return Parts(
        stack=Observed(T, StackInfo("img", STACK_ID, stack_status, T, tags)) if stack_status else None,
        ami=Observed(T, AmiInfo("ami-1", "available", tags)) if ami else None,
    )


@pytest.mark.parametrize(
    ("image_status", "stored", "expected"),
    [
        pytest.param(
            "AVAILABLE", parts(ami=True, stack_status="DELETE_FAILED"),
            {"imageId": "img", "imageBuildStatus": "BUILD_COMPLETE", "ec2AmiInfo": {"amiId": "ami-1"},
             "region": "us-east-1", "version": "3.9.0"},
            id="available-is-the-amis",
        ),
        pytest.param(
            "PENDING", parts(stack_status="CREATE_IN_PROGRESS"),
            {"imageId": "img", "imageBuildStatus": "BUILD_IN_PROGRESS",
             "cloudformationStackStatus": "CREATE_IN_PROGRESS", "cloudformationStackArn": STACK_ID,
             "region": "us-east-1", "version": "3.9.0"},
            id="pending-is-the-stacks",
        ),
        pytest.param(
            "FAILED", parts(stack_status="DELETE_FAILED", version=None),
            {"imageId": "img", "imageBuildStatus": "DELETE_FAILED", "cloudformationStackStatus": "DELETE_FAILED",
             "cloudformationStackArn": STACK_ID, "region": "us-east-1"},
            id="failed-without-version-omits-it",
        ),
    ],
)
def test_summary(image_status: str, stored: Parts, expected: dict[str, object]) -> None:
    assert summary(image_id="img", parts=stored, image_status=image_status, region="us-east-1") == expected


def test_the_filters_are_pclusters() -> None:
    assert IMAGE_STATUS_FILTERS == ("AVAILABLE", "PENDING", "FAILED")
    assert set(PENDING_STACK_STATUSES) | set(FAILED_STACK_STATUSES) <= set(status.BUILD_STATUS_BY_STACK_STATUS)
    assert not set(PENDING_STACK_STATUSES) & set(FAILED_STACK_STATUSES)



# --- the route -------------------------------------------------------------------------------------

LIST = "/v3/images/custom"


def observed(image_id: str, *, at: datetime, stack_status: str | None = None, ami: bool = False) -> Change:
    tags = (("parallelcluster:image_id", image_id), ("parallelcluster:version", "3.9.0"))
    stack_id = f"arn:aws:cloudformation:us-east-1:123456789012:stack/{image_id}/1"
    return Change(
        region="us-east-1", image_id=image_id, source=Source.RECONCILE, observed_at=at,
        stack=Observed(at, StackInfo(image_id, stack_id, stack_status, T, tags) if stack_status else None),
        ami=Observed(at, AmiInfo(f"ami-{image_id}", "available", tags) if ami else None),
        config=Observed(at, ConfigLocation(bucket="b", key=f"{image_id}/image-config.yaml", available=True)),
    )


async def page(client: httpx.AsyncClient, image_status: str, **params: str) -> httpx.Response:
    # The plain page (httpx asks for gzip by default; tests/test_compression.py covers that case).
    response = await client.get(
        LIST, params={"imageStatus": image_status, **params}, headers={"Accept-Encoding": "identity"}
    )
    assert response.status_code == 200, response.text
    return response


@pytest.mark.asyncio
async def test_a_page_is_byte_for_byte_the_json_of_its_entries(runtime: Runtime, client: httpx.AsyncClient) -> None:
    await runtime.cache.apply_many(
        [observed(f"bytes-{index:03d}", at=T, ami=True) for index in range(150)]
        + [observed("bytes-pending", at=T, stack_status="CREATE_IN_PROGRESS")]
    )
    first = await page(client, "AVAILABLE")
    second = await page(client, "AVAILABLE", nextToken=first.json()["nextToken"])
    pending = await page(client, "PENDING")
    for response in (first, second, pending):
        document = orjson.loads(response.content)
        # What orjson makes of the document, keys in pcluster's order: nothing else in the bytes.
        assert response.content == orjson.dumps(document)
        assert list(document) == (["images", "nextToken"] if "nextToken" in document else ["images"])
    assert len(first.json()["images"]) == 100 and len(second.json()["images"]) == 50
    assert "nextToken" not in second.json()
    assert pending.json()["images"][0]["cloudformationStackStatus"] == "CREATE_IN_PROGRESS"
    assert first.headers["content-type"] == "application/json"
    assert int(first.headers["content-length"]) == len(first.content)


@pytest.mark.asyncio
async def test_a_page_etag_changes_whenever_its_bytes_do(runtime: Runtime, client: httpx.AsyncClient) -> None:
    # An image with an AMI is described by its AMI: its stack rolling back changes no served document (no new
    # version), but it does change what the FAILED page says about it.
    await runtime.cache.apply(observed("both", at=T, ami=True, stack_status="ROLLBACK_IN_PROGRESS"))
    before = await page(client, "FAILED")
    version = (await runtime.cache.read(region="us-east-1", image_id="both"))
    await runtime.cache.apply(observed("both", at=T + timedelta(minutes=1), ami=True, stack_status="ROLLBACK_COMPLETE"))
    after = await client.get(LIST, params={"imageStatus": "FAILED"}, headers={"If-None-Match": before.headers["etag"]})
    again = await runtime.cache.read(region="us-east-1", image_id="both")
    assert version is not None and again is not None and version.version == again.version
    assert after.status_code == 200 and after.headers["etag"] != before.headers["etag"]
    assert after.json()["images"][0]["cloudformationStackStatus"] == "ROLLBACK_COMPLETE"
    unchanged = await client.get(
        LIST, params={"imageStatus": "FAILED"}, headers={"If-None-Match": after.headers["etag"]}
    )
    assert unchanged.status_code == 304 and unchanged.headers["etag"] == after.headers["etag"]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_page_is_rebuilt_behind_its_clients_and_never_older_than_the_bound(
    runtime: Runtime, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound = 0.6
    runtime.settings = runtime.lookup._settings = dataclasses.replace(runtime.settings, read_cache_seconds=bound)
    await runtime.cache.apply(observed("polled-0", at=T, ami=True))
    built: list[float] = []
    original = queries.list_images

    async def slow(*args: Any, **kwargs: Any) -> queries.ListPage:
        built.append(time.monotonic())
        if len(built) > 1:
            await asyncio.sleep(0.2)  # a slow rebuild: nobody should wait for it
        return await original(*args, **kwargs)

    monkeypatch.setattr(queries, "list_images", slow)
    first = await page(client, "AVAILABLE")
    # Another replica's write: this process hears nothing of it (no local write to drop the page).
    other = Runtime.build(runtime.settings, engine=runtime.engine, aws=runtime.aws)
    try:
        await other.cache.apply(observed("polled-1", at=T, ami=True))
    finally:
        other.cache.close()
    await asyncio.sleep(bound / 2 + 0.05)
    started = time.monotonic()
    served = await page(client, "AVAILABLE")
    waited = time.monotonic() - started
    # Past half its life the page is still served at once, and rebuilt behind this request.
    assert served.content == first.content and waited < 0.15
    await asyncio.sleep(0.3)
    assert len(built) == 2
    rebuilt = await page(client, "AVAILABLE")
    assert [item["imageId"] for item in rebuilt.json()["images"]] == ["polled-0", "polled-1"]
    # Past the bound (no request came to rebuild it early) the request builds it, unless the database can say
    # that nothing changed since it was built (SQLite can; PostgreSQL cannot).
    await asyncio.sleep(bound + 0.05)
    count = len(built)
    await page(client, "AVAILABLE")
    assert len(built) == count + (0 if runtime.engine.dialect.name == "sqlite" else 1)
    # Never older than the bound: another replica's write, and past the bound the page is built again.
    other = Runtime.build(runtime.settings, engine=runtime.engine, aws=runtime.aws)
    try:
        await other.cache.apply(observed("polled-2", at=T, ami=True))
    finally:
        other.cache.close()
    await asyncio.sleep(bound + 0.05)
    count = len(built)
    latest = await page(client, "AVAILABLE")
    assert len(built) == count + 1
    assert [item["imageId"] for item in latest.json()["images"]] == ["polled-0", "polled-1", "polled-2"]


@pytest.mark.asyncio
async def test_a_local_write_drops_every_remembered_page_at_once(runtime: Runtime, client: httpx.AsyncClient) -> None:
    await runtime.cache.apply(observed("local-0", at=T, ami=True))
    assert len((await page(client, "AVAILABLE")).json()["images"]) == 1
    await runtime.cache.apply(observed("local-1", at=T, ami=True))
    assert len((await page(client, "AVAILABLE")).json()["images"]) == 2


@pytest.mark.asyncio
async def test_without_a_read_cache_every_request_reads_the_database(
    runtime: Runtime, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.settings = dataclasses.replace(runtime.settings, read_cache_seconds=0.0)
    calls = 0
    original = queries.list_images

    async def counting(*args: Any, **kwargs: Any) -> queries.ListPage:
        nonlocal calls
        calls += 1
        return await original(*args, **kwargs)

    monkeypatch.setattr(queries, "list_images", counting)
    for _ in range(3):
        await page(client, "AVAILABLE")
    assert calls == 3


@pytest.mark.asyncio
async def test_a_remembered_page_is_answered_in_front_of_the_router(runtime: Runtime) -> None:
    from service.api.app import create_app

    await runtime.cache.apply(observed("front", at=T, ami=True))
    app = create_app(runtime.settings, runtime=runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://statuscache") as http:
        first = await page(http, "AVAILABLE")
        routed: list[str] = []
        router = app.starlette.middleware_stack
        assert router is not None

        async def counting(scope: Any, receive: Any, send: Any) -> None:
            routed.append(scope["query_string"].decode())
            await router(scope, receive, send)

        app.starlette.middleware_stack = counting
        second = await page(http, "AVAILABLE")
        other_page = await page(http, "PENDING")
        bad = await http.get(LIST, params={"imageStatus": "DONE"})
    assert second.content == first.content and second.headers["etag"] == first.headers["etag"]
    # Only what was not prepared yet reached the router: a page to build, and bad input.
    assert routed == ["imageStatus=PENDING", "imageStatus=DONE"]
    assert other_page.json() == {"images": []} and bad.status_code == 400
