"""The describe endpoint: every branch live and cached, errors, headers, and AWS calls counted at the fake."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from service.demo.fakeaws import FakeAws
from service.ingest.lookup import Lookup
from service.runtime import Runtime
from tests.conftest import OTHER_REGION, REGION, stored_images

pytestmark = pytest.mark.asyncio

URL = "/v3/images/custom/{}"


def without_signature(body: dict[str, Any]) -> dict[str, Any]:
    """The document with the pre-signed URL cut to bucket and key (signature and expiry vary)."""
    url = body.get("imageConfiguration", {}).get("url")
    if url and url != "NOT_AVAILABLE":
        body = {**body, "imageConfiguration": {"url": urlsplit(url).path}}
    return body


async def describe(client: httpx.AsyncClient, image_id: str, **params: str) -> httpx.Response:
    return await client.get(URL.format(image_id), params=params)


async def test_building_stack_is_described_with_image_builder_status(
    client: httpx.AsyncClient, aws_state: FakeAws
) -> None:
    stack_id = aws_state.create_image_stack(region=REGION, image_id="alinux-build", imagebuilder_status="BUILDING")

    response = await describe(client, "alinux-build", region=REGION)

    assert response.status_code == 200
    body = response.json()
    assert body["imageId"] == "alinux-build"
    assert body["region"] == REGION
    assert body["imageBuildStatus"] == "BUILD_IN_PROGRESS"
    assert body["cloudformationStackStatus"] == "CREATE_IN_PROGRESS"
    assert body["cloudformationStackArn"] == stack_id
    assert body["imagebuilderImageStatus"] == "BUILDING"
    assert "imagebuilderImageStatusReason" not in body
    assert body["version"] == "3.9.0"
    assert body["imageBuildLogsArn"].endswith("/aws/imagebuilder/ParallelClusterImage-alinux-build")
    assert {"key": "parallelcluster:image_id", "value": "alinux-build"} in body["cloudformationStackTags"]
    assert body["cloudformationStackCreationTime"].endswith("Z")
    assert len(body["cloudformationStackCreationTime"]) == len("2022-03-30T23:23:33.731Z")
    assert urlsplit(body["imageConfiguration"]["url"]).path.endswith("/configs/image-config.yaml")
    assert None not in body.values()
    assert response.headers["x-cache"] == "MISS"


async def test_ami_path_wins_and_has_no_cloudformation_fields(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="done-image", status="DELETE_FAILED", reason="busy")
    ami_id = aws_state.create_ami(region=REGION, image_id="done-image", version="3.8.0")

    body = (await describe(client, "done-image", region=REGION)).json()

    assert body["imageBuildStatus"] == "BUILD_COMPLETE"
    assert body["version"] == "3.8.0"
    assert body["ec2AmiInfo"]["amiId"] == ami_id
    assert body["ec2AmiInfo"]["state"] == "AVAILABLE"
    assert body["ec2AmiInfo"]["architecture"] == "x86_64"
    assert body["creationTime"].endswith("Z")
    assert not [key for key in body if key.startswith("cloudformation") or key.startswith("imagebuilder")]


@pytest.mark.parametrize(
    ("stack_status", "reason", "build_status"),
    [
        ("CREATE_IN_PROGRESS", None, "BUILD_IN_PROGRESS"),
        ("CREATE_COMPLETE", None, "BUILD_COMPLETE"),
        ("ROLLBACK_IN_PROGRESS", "The following resource(s) failed to create: [ParallelClusterImage].", "BUILD_FAILED"),
        ("ROLLBACK_COMPLETE", "Rollback requested by user.", "BUILD_FAILED"),
        ("CREATE_FAILED", "Resource creation cancelled", "BUILD_FAILED"),
        ("DELETE_IN_PROGRESS", "User Initiated", "DELETE_IN_PROGRESS"),
        ("DELETE_FAILED", "The following resource(s) failed to delete: [InstanceRole].", "DELETE_FAILED"),
        ("UPDATE_ROLLBACK_COMPLETE", None, "BUILD_FAILED"),
    ],
)
@pytest.mark.slow
async def test_live_and_cached_answers_are_identical_for_every_stack_branch(
    client: httpx.AsyncClient, aws_state: FakeAws, stack_status: str, reason: str | None, build_status: str
) -> None:
    aws_state.create_image_stack(
        region=REGION, image_id="branchy", status=stack_status, reason=reason, imagebuilder_status="FAILED",
        imagebuilder_reason="Image Builder workflow failed" if "ROLLBACK" in stack_status else None,
    )

    live = await describe(client, "branchy", region=REGION)
    cached = await describe(client, "branchy", region=REGION)

    assert live.status_code == cached.status_code == 200
    assert live.headers["x-cache"] == "MISS" and cached.headers["x-cache"] == "HIT"
    assert live.content == cached.content
    body = live.json()
    assert body["imageBuildStatus"] == build_status
    assert body["cloudformationStackStatus"] == stack_status
    assert body.get("cloudformationStackStatusReason") == reason


@pytest.mark.slow
async def test_live_and_cached_answers_are_identical_on_the_ami_path(
    client: httpx.AsyncClient, aws_state: FakeAws
) -> None:
    aws_state.create_ami(region=REGION, image_id="ami-path", description=None)
    live = await describe(client, "ami-path")
    cached = await describe(client, "ami-path")
    assert live.content == cached.content
    assert "description" not in live.json()["ec2AmiInfo"]


@pytest.mark.slow
async def test_reconciled_answer_equals_live_answer(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime, settings: Any
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="rec-stack", imagebuilder_status="TESTING")
    aws_state.create_ami(region=REGION, image_id="rec-ami")
    await runtime.reconciler.run_pass(region=REGION)
    from_reconcile = {i: (await describe(client, i)).content for i in ("rec-stack", "rec-ami")}

    # The same state looked up live by a process with an empty cache.
    async with runtime.engine.begin() as connection:
        from sqlalchemy import text

        await connection.execute(text("DELETE FROM images"))
        await connection.execute(text("DELETE FROM revisions"))
    # A fresh process.
    runtime.lookup = Lookup(cache=runtime.cache, aws=runtime.aws, settings=runtime.settings, metrics=runtime.metrics)
    live = {i: await describe(client, i) for i in ("rec-stack", "rec-ami")}
    for image_id, response in live.items():
        assert response.headers["x-cache"] == "MISS"
        assert response.content == from_reconcile[image_id]


async def test_image_builder_failure_leaves_its_fields_out(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="no-resource", with_image_resource=False)
    aws_state.create_image_stack(region=REGION, image_id="no-ib-image", imagebuilder_status=None)

    for image_id in ("no-resource", "no-ib-image"):
        response = await describe(client, image_id)
        assert response.status_code == 200
        assert "imagebuilderImageStatus" not in response.json()
        assert "imagebuilderImageStatusReason" not in response.json()


@pytest.mark.slow
async def test_unknown_bucket_gives_not_available_url(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="no-bucket", bucket="bucket-that-was-deleted")
    aws_state.reset_calls()
    # The builder creates the bucket; remove it so HeadBucket says 404, as for a deleted bucket.
    import boto3

    s3 = boto3.client("s3", region_name=REGION)
    for item in s3.list_objects_v2(Bucket="bucket-that-was-deleted").get("Contents", []):
        s3.delete_object(Bucket="bucket-that-was-deleted", Key=item["Key"])
    s3.delete_bucket(Bucket="bucket-that-was-deleted")

    body = (await describe(client, "no-bucket")).json()
    assert body["imageConfiguration"] == {"url": "NOT_AVAILABLE"}


async def test_missing_image_is_pcluster_404_and_remembered(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    first = await describe(client, "never-built")
    calls_after_first = aws_state.total_calls()
    second = await describe(client, "never-built")

    assert first.status_code == second.status_code == 404
    assert first.json() == {"message": "No image or stack associated with ParallelCluster image id: never-built."}
    assert calls_after_first == 2  # DescribeImages, DescribeStacks: what pcluster calls
    assert aws_state.total_calls() == calls_after_first


@pytest.mark.slow
async def test_cached_hit_makes_zero_aws_calls(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="hot-image")
    await describe(client, "hot-image")
    aws_state.reset_calls()

    for _ in range(20):
        response = await describe(client, "hot-image")
        assert response.headers["x-cache"] == "HIT"

    assert aws_state.total_calls() == 0


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        (
            URL.format("1starts-with-digit"),
            {},
            "Bad Request: '1starts-with-digit' does not match '^[a-zA-Z][a-zA-Z0-9-]+$'",
        ),
        (URL.format("has_underscore"), {}, "Bad Request: 'has_underscore' does not match '^[a-zA-Z][a-zA-Z0-9-]+$'"),
        (URL.format("x"), {}, "Bad Request: 'x' does not match '^[a-zA-Z][a-zA-Z0-9-]+$'"),
        (URL.format("a" * 129), {}, f"Bad Request: '{'a' * 129}' is too long"),
        # pcluster's own wording: its BadRequestException puts "Bad Request: " before every message.
        (URL.format("good-id"), {"region": "mars-1"}, "Bad Request: invalid or unsupported region 'mars-1'"),
        (URL.format("good-id"), {"region": "US-EAST-1"}, "Bad Request: invalid or unsupported region 'US-EAST-1'"),
        (
            URL.format("good-id"),
            {"region": "ap-south-1"},
            "Bad Request: region 'ap-south-1' is not served here; configured regions: us-east-1, eu-west-1",
        ),
        # `$` matches before a final newline: with re.match this id passed, cost two AWS calls and a 404.
        (URL.format("abc%0A"), {}, "Bad Request: 'abc\\n' does not match '^[a-zA-Z][a-zA-Z0-9-]+$'"),
        (URL.format("good-id"), {"region": "us-east-1\n"}, "Bad Request: invalid or unsupported region 'us-east-1\n'"),
        # Unicode digits are digits to `\d`, not to AWS.
        (
            URL.format("good-id"),
            {"region": "us-east-\u0661"},
            "Bad Request: invalid or unsupported region 'us-east-\u0661'",
        ),
        # The UTC form of these falls outside years 1-9999: it used to be an OverflowError and a 500.
        *[
            (
                URL.format("good-id"),
                {"at": moment},
                "Bad Request: at must be an ISO 8601 timestamp between years 1 and 9999 UTC, "
                f"e.g. 2022-03-30T23:23:33Z; got '{moment}'",
            )
            for moment in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00")
        ],
    ],
)
async def test_bad_input_is_400_and_reaches_neither_aws_nor_sql(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime, path: str, params: dict[str, str], message: str
) -> None:
    response = await client.get(path, params=params)

    assert response.status_code == 400
    assert response.json() == {"message": message}
    assert aws_state.total_calls() == 0
    assert await stored_images(runtime) == 0


async def test_longest_valid_id_is_accepted(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    response = await describe(client, "a" * 128)
    assert response.status_code == 404


@pytest.mark.slow
async def test_region_defaults_to_first_configured_and_is_reported(
    client: httpx.AsyncClient, aws_state: FakeAws
) -> None:
    aws_state.create_image_stack(region=OTHER_REGION, image_id="eu-image")
    assert (await describe(client, "eu-image")).status_code == 404
    response = await describe(client, "eu-image", region=OTHER_REGION)
    assert response.status_code == 200
    assert response.json()["region"] == OTHER_REGION
    aws_state.create_image_stack(region=REGION, image_id="us-image")
    assert (await describe(client, "us-image")).json()["region"] == REGION


async def test_etag_and_if_none_match_answer_304_without_body(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="etagged")
    first = await describe(client, "etagged")
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")

    again = await client.get(URL.format("etagged"), headers={"If-None-Match": etag})
    other = await client.get(URL.format("etagged"), headers={"If-None-Match": '"nope"'})

    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert other.status_code == 200


@pytest.mark.slow
async def test_weak_if_none_match_matches_on_both_paths_and_on_list_pages(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    # A compressing proxy hands its clients W/"..." for our strong tag; If-None-Match compares weakly.
    aws_state.create_image_stack(region=REGION, image_id="weakly")
    etag = (await describe(client, "weakly")).headers["etag"]
    weak = {"If-None-Match": f'"other", W/{etag}'}
    full = await client.get(URL.format("weakly"), headers=weak)
    hot = await client.get(URL.format("weakly"), headers=weak)
    assert (full.status_code, hot.status_code) == (304, 304)
    await runtime.reconciler.run_pass(region=REGION)
    listing = await client.get("/v3/images/custom", params={"imageStatus": "PENDING"})
    weak_page = {"If-None-Match": f"W/{listing.headers['etag']}"}
    revalidated = await client.get("/v3/images/custom", params={"imageStatus": "PENDING"}, headers=weak_page)
    assert revalidated.status_code == 304


@pytest.mark.slow
async def test_if_modified_since_is_ignored_because_last_modified_misses_url_changes(
    client: httpx.AsyncClient, aws_state: FakeAws
) -> None:
    # Last-Modified is the record's change time: a re-signed URL changes the body and not that date (and
    # two changes can share a second), so only the ETag may answer 304 (README, "Conditional requests").
    aws_state.create_image_stack(region=REGION, image_id="dated")
    first = await describe(client, "dated")
    later = await client.get(URL.format("dated"), headers={"If-Modified-Since": "Fri, 31 Dec 9999 23:59:59 GMT"})
    assert first.status_code == later.status_code == 200
    assert later.content == first.content


@pytest.mark.slow
async def test_etag_changes_when_the_record_changes(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="moving")
    first = await describe(client, "moving")
    aws_state.set_stack_status(region=REGION, stack_name="moving", status="CREATE_COMPLETE")
    await runtime.reconciler.run_pass(region=REGION)
    second = await describe(client, "moving")

    assert second.json()["cloudformationStackStatus"] == "CREATE_COMPLETE"
    assert second.headers["etag"] != first.headers["etag"]
    assert (await client.get(URL.format("moving"), headers={"If-None-Match": first.headers["etag"]})).status_code == 200


@pytest.mark.slow
async def test_last_modified_and_age_headers(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="aged")
    response = await describe(client, "aged")
    assert response.headers["last-modified"].endswith("GMT")
    assert int(response.headers["age"]) >= 0


@pytest.mark.slow
async def test_aws_down_with_nothing_cached_is_503(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    aws_state.fail_all(status=503)
    try:
        response = await describe(client, "unreachable")
    finally:
        aws_state.recover()
    assert response.status_code == 503
    assert set(response.json()) == {"message"}


@pytest.mark.slow
async def test_aws_down_still_serves_what_is_cached(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="survivor")
    await describe(client, "survivor")
    aws_state.fail_all(status=503)
    try:
        response = await describe(client, "survivor")
    finally:
        aws_state.recover()
    assert response.status_code == 200
    assert response.headers["x-cache"] == "HIT"


@pytest.mark.slow
async def test_throttled_lookup_is_429_and_stores_nothing(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="throttled")
    # retries={"max_attempts": 3} is three retries after the first try: four throttled answers.
    aws_state.fail_next("ec2.DescribeImages", code="RequestLimitExceeded", times=4)

    response = await describe(client, "throttled")

    assert response.status_code == 429
    assert "message" in response.json()
    assert await stored_images(runtime) == 0
    # Once AWS answers again the image is found: the failure was not remembered as a 404.
    assert aws_state.calls["ec2.DescribeImages"] == 4
    assert (await describe(client, "throttled")).status_code == 200


@pytest.mark.slow
async def test_concurrent_misses_share_one_live_lookup(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="stampede")

    responses = await asyncio.gather(*(describe(client, "stampede") for _ in range(50)))

    assert {response.status_code for response in responses} == {200}
    assert runtime.metrics.live_lookups() == 1
    assert aws_state.calls["cloudformation.DescribeStacks"] == 1


async def test_unknown_routes_and_methods_are_pcluster_shaped(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v3/nothing-here")
    wrong_method = await client.post(URL.format("some-image"))
    assert missing.status_code == 404 and set(missing.json()) == {"message"}
    assert wrong_method.status_code == 405 and set(wrong_method.json()) == {"message"}


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert orjson.loads(ready.content)["checks"] == {"database": True, "schema": True}


@pytest.mark.slow
async def test_hot_path_answers_exactly_as_the_full_path(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="hot-and-full")
    await describe(client, "hot-and-full")  # live, then stored
    full = await describe(client, "hot-and-full")  # read from SQL and prepared by the Starlette route
    hot = await describe(client, "hot-and-full")  # record and bytes in memory: answered in front of Starlette
    runtime.lookup = Lookup(cache=runtime.cache, aws=runtime.aws, settings=runtime.settings, metrics=runtime.metrics)
    cold = await describe(client, "hot-and-full")  # memory forgotten: the full path again

    def comparable(response: httpx.Response) -> dict[str, str]:
        # Age moves with the clock; every request has its own id (both paths send one).
        return {key: value for key, value in response.headers.items() if key not in {"age", "x-request-id"}}

    assert full.content == hot.content == cold.content
    assert comparable(full) == comparable(hot) == comparable(cold)
    assert len({response.headers["x-request-id"] for response in (full, hot, cold)}) == 3
    assert hot.headers["x-cache"] == "HIT"
    revalidated = await client.get(URL.format("hot-and-full"), headers={"If-None-Match": hot.headers["etag"]})
    assert revalidated.status_code == 304 and revalidated.content == b""


class SeenPaths:
    """A pure ASGI middleware, added the Starlette way, that records every request and response status."""

    def __init__(self, app: Any, *, seen: list[tuple[str, int]]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def watch(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.seen.append((scope["path"], message["status"]))
            await send(message)

        await self.app(scope, receive, watch)


async def test_middleware_sees_every_request_cached_describes_included(
    runtime: Runtime, aws_state: FakeAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.middleware import Middleware

    from service.api.app import create_app
    from service.api.describe import DescribeImage

    routed: list[str] = []
    full_route = DescribeImage.__call__

    async def counting(self: DescribeImage, scope: Any, receive: Any, send: Any) -> None:
        routed.append(scope["path"])
        await full_route(self, scope, receive, send)

    monkeypatch.setattr(DescribeImage, "__call__", counting)
    seen: list[tuple[str, int]] = []
    app = create_app(runtime.settings, runtime=runtime, middleware=[Middleware(SeenPaths, seen=seen)])
    aws_state.create_image_stack(region=REGION, image_id="watched")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://statuscache") as http:
        responses = [await describe(http, "watched") for _ in range(4)]
        etag = responses[-1].headers["etag"]
        not_modified = await http.get(URL.format("watched"), headers={"If-None-Match": etag})
        listing = await http.get("/v3/images/custom", params={"imageStatus": "PENDING"})
        bad = await describe(http, "1-bad")
    assert [response.headers["x-cache"] for response in responses] == ["MISS", "HIT", "HIT", "HIT"]
    # The live lookup (and, without SQLite's direct read, the first cached read) and the bad id reached the
    # route; the other cached answers, the 304 among them, were the fast path's.
    assert routed[-1] == URL.format("1-bad") and 1 <= routed.count(URL.format("watched")) <= 2
    assert not_modified.status_code == 304
    assert seen == [
        *[(URL.format("watched"), 200)] * 4,
        (URL.format("watched"), 304),
        ("/v3/images/custom", listing.status_code),
        (URL.format("1-bad"), bad.status_code),
    ]


@pytest.mark.slow
async def test_describe_and_list_ignore_parameters_they_do_not_take_as_pcluster_does(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    # pcluster's API (connexion, without strict validation) ignores unknown query parameters; so do its routes
    # here, on the full path and on the fast path alike (the history routes are ours, and refuse them).
    aws_state.create_image_stack(region=REGION, image_id="lenient")
    plain = [await describe(client, "lenient") for _ in range(3)]
    extra = [await describe(client, "lenient", regoin="nowhere", x="1") for _ in range(3)]
    assert [r.status_code for r in plain + extra] == [200] * 6
    assert {r.content for r in plain + extra} == {plain[-1].content}
    await runtime.reconciler.run_pass(region=REGION)
    pages = [
        await client.get("/v3/images/custom", params=params)
        for params in ({"imageStatus": "PENDING"}, {"imageStatus": "PENDING", "statuss": "x"})
        for _ in range(2)
    ]
    assert [r.status_code for r in pages] == [200] * 4
    assert {r.content for r in pages} == {pages[0].content}


@pytest.mark.slow
async def test_no_route_shadows_an_image_id(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    # "changes" is a valid image id: the change stream lives at /v3/image-changes instead.
    aws_state.create_image_stack(region=REGION, image_id="changes")
    first = await describe(client, "changes")
    second = await describe(client, "changes")
    assert first.status_code == second.status_code == 200
    assert first.json()["imageId"] == "changes" and second.headers["x-cache"] == "HIT"
    history = await client.get(URL.format("changes") + "/history")
    assert history.status_code == 200 and history.json()["imageId"] == "changes"


async def test_readiness_fails_and_streams_end_once_shutdown_begins(runtime: Runtime) -> None:
    from service.api.app import create_app
    from tests.conftest import serving

    async with serving(create_app(runtime.settings, runtime=runtime)) as base, httpx.AsyncClient(base_url=base) as http:
        async with http.stream("GET", "/v3/image-changes") as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == "retry: 2000"
            runtime.begin_shutdown()
            rest = [line async for line in lines]
        ready = await http.get("/readyz")
    assert ": shutting down" in rest
    assert ready.status_code == 503
    assert orjson.loads(ready.content) == {"ready": False, "checks": {"accepting_requests": False}}


@pytest.mark.slow
async def test_aws_unreachable_503_asks_to_retry_later(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    aws_state.fail_all(status=503)
    try:
        response = await describe(client, "unreachable-retry")
    finally:
        aws_state.recover()
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert response.json() == {"message": "The image is not cached and AWS could not be reached; retry later."}


@pytest.mark.slow
async def test_answer_not_confirmed_for_longer_than_the_bound_says_so(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from service.store.tables import images
    from service.support.clock import utcnow

    aws_state.create_image_stack(region=REGION, image_id="long-unconfirmed")
    await describe(client, "long-unconfirmed")
    fresh = await describe(client, "long-unconfirmed")
    # Nothing confirmed it for longer than two reconcile intervals (the default bound).
    async with runtime.engine.begin() as connection:
        await connection.execute(
            update(images).values(confirmed_at=utcnow() - timedelta(seconds=2 * runtime.settings.resync_seconds + 5))
        )
    runtime.lookup = Lookup(cache=runtime.cache, aws=runtime.aws, settings=runtime.settings, metrics=runtime.metrics)
    old = await describe(client, "long-unconfirmed")

    assert fresh.headers["x-cache"] == "HIT" and "x-cache-stale" not in fresh.headers
    assert old.status_code == 200 and old.headers["x-cache"] == "HIT"
    assert old.headers["x-cache-stale"] == "unconfirmed"
    assert int(old.headers["age"]) > 2 * runtime.settings.resync_seconds
    assert old.content == fresh.content


@pytest.mark.slow
async def test_answers_are_unconfirmed_from_the_moment_reconciling_fails(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    aws_state.create_ami(region=REGION, image_id="outage-survivor")
    await runtime.reconciler.loop().run_once()
    before = await describe(client, "outage-survivor")

    aws_state.fail_all(status=503)
    try:
        await runtime.reconciler.loop().run_once()
        during = await describe(client, "outage-survivor")
    finally:
        aws_state.recover()
    await runtime.reconciler.loop().run_once()
    after = await describe(client, "outage-survivor")

    assert [response.status_code for response in (before, during, after)] == [200, 200, 200]
    assert "x-cache-stale" not in before.headers
    assert during.headers["x-cache"] == "HIT" and during.headers["x-cache-stale"] == "unconfirmed"
    assert "x-cache-stale" not in after.headers
    assert runtime.metrics.stale_answers == {"unconfirmed": 1}


@pytest.mark.slow
async def test_a_past_answer_carries_no_staleness(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    from service.support.clock import utcnow

    aws_state.create_image_stack(region=REGION, image_id="in-the-past")
    await describe(client, "in-the-past")
    runtime.freshness.reconcile_behind_since[REGION] = utcnow().timestamp() + 60

    past = await describe(client, "in-the-past", at=utcnow().isoformat())

    assert past.status_code == 200 and past.headers["x-cache"] == "HIT" and "x-cache-stale" not in past.headers
