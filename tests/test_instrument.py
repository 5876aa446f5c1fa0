"""The outermost middleware: request ids, per-route counters (the fast path's answers included), log context."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from starlette.middleware import Middleware

from service.api.app import create_app
from service.api.instrument import CALLER_KEY, UNMATCHED
from service.demo.fakeaws import FakeAws
from service.metrics import CACHE_HIT, CACHE_MISS, CACHE_NONE, CACHE_NOT_MODIFIED
from service.runtime import Runtime
from service.support.logs import JsonFormatter
from tests.conftest import REGION

pytestmark = pytest.mark.asyncio

DESCRIBE = "/v3/images/custom/{image_id}"


class Lines(logging.Handler):
    """Every log line, formatted as the service's JSON formatter writes it, as dicts."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def counts(runtime: Runtime) -> dict[tuple[str, int, str], int]:
    return {key: histogram.count for key, histogram in runtime.metrics.http_requests.items()}


async def test_every_answer_carries_its_own_request_id(client: httpx.AsyncClient, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="ids")
    answers = [
        await client.get("/v3/images/custom/ids"),  # live
        await client.get("/v3/images/custom/ids"),  # cached
        await client.get("/v3/images/custom/ids"),  # the fast path
        await client.get("/v3/images/custom/1-bad"),  # 400
        await client.get("/no/such/route"),  # 404
        await client.get("/healthz"),
    ]
    ids = [answer.headers["x-request-id"] for answer in answers]
    assert len(set(ids)) == len(ids)
    assert all(len(request_id) > 12 for request_id in ids)


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("b7e2c1d0-5d1e-4a8e-9d4c-2f0e7b9a1c33", True),
        ("lb:1a2b3c/trace=9", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("line\tbreak", False),
        ("", False),
    ],
)
async def test_a_clients_request_id_is_kept_when_it_looks_like_one(
    client: httpx.AsyncClient, sent: str, kept: bool
) -> None:
    answer = await client.get("/healthz", headers={"X-Request-ID": sent})
    assert (answer.headers["x-request-id"] == sent) is kept
    assert answer.headers["x-request-id"]


@pytest.mark.slow
async def test_requests_are_counted_by_route_status_and_cache_outcome_fast_path_included(
    client: httpx.AsyncClient, aws_state: FakeAws, runtime: Runtime
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="counted")
    first = await client.get("/v3/images/custom/counted")
    for _ in range(4):
        hit = await client.get("/v3/images/custom/counted")
    await client.get("/v3/images/custom/counted", headers={"If-None-Match": hit.headers["etag"]})
    await client.get("/v3/images/custom/1-bad")
    await client.get("/v3/images/custom/never-built")
    await client.get("/v3/images/custom", params={"imageStatus": "PENDING"})
    await client.get("/v3/nothing/here/at/all")

    assert first.headers["x-cache"] == "MISS" and hit.headers["x-cache"] == "HIT"
    assert counts(runtime) == {
        (DESCRIBE, 200, CACHE_MISS): 1,
        (DESCRIBE, 200, CACHE_HIT): 4,
        (DESCRIBE, 304, CACHE_NOT_MODIFIED): 1,
        (DESCRIBE, 400, CACHE_NONE): 1,
        (DESCRIBE, 404, CACHE_NONE): 1,
        ("/v3/images/custom", 200, CACHE_NONE): 1,
        (UNMATCHED, 404, CACHE_NONE): 1,
    }
    latencies = runtime.metrics.http_requests[(DESCRIBE, 200, CACHE_HIT)]
    assert latencies.count == 4 and 0 < latencies.sum < 5


@pytest.mark.slow
async def test_every_line_a_request_causes_carries_its_id(
    client: httpx.AsyncClient, aws_state: FakeAws, lines: Lines
) -> None:
    aws_state.fail_all(status=503)
    answer = await client.get("/v3/images/custom/unreachable", headers={"X-Request-ID": "trace-42"})
    aws_state.recover()

    assert answer.status_code == 503
    caused = [line for line in lines.lines if line["logger"].startswith("service.")]
    assert caused, "the failed lookup logs"
    assert {line["request_id"] for line in caused} == {"trace-42"}
    # Lines written outside any request carry no request id.
    logging.getLogger("service.test").warning("between requests")
    assert "request_id" not in lines.lines[-1]


class NamesTheCaller:
    """Stands in for the authentication layer: names the caller in the scope, then logs."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[CALLER_KEY] = "ci-bot"
            logging.getLogger("service.auth").info("authenticated")
        await self.app(scope, receive, send)


async def test_the_caller_an_inner_layer_names_is_in_the_lines_and_the_access_log(
    runtime: Runtime, lines: Lines
) -> None:
    settings = dataclasses.replace(runtime.settings, access_log=True)
    app = create_app(settings, runtime=runtime, middleware=[Middleware(NamesTheCaller)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://statuscache") as http:
        answer = await http.get("/healthz", params={"probe": "1"})

    request_id = answer.headers["x-request-id"]
    authenticated, accessed = [line for line in lines.lines if line["logger"].startswith("service.")][-2:]
    assert authenticated["message"] == "authenticated"
    assert (authenticated["caller"], authenticated["request_id"]) == ("ci-bot", request_id)
    assert accessed["logger"] == "service.access"
    assert accessed["message"].startswith("GET /healthz?probe=1 200 ")
    assert {key: accessed[key] for key in ("method", "path", "status", "route", "cache", "caller", "request_id")} == {
        "method": "GET", "path": "/healthz", "status": 200, "route": "/healthz", "cache": CACHE_NONE,
        "caller": "ci-bot", "request_id": request_id,
    }
    assert accessed["duration_ms"] >= 0


async def test_no_access_log_unless_asked_for(client: httpx.AsyncClient, lines: Lines) -> None:
    await client.get("/healthz")
    assert not [line for line in lines.lines if line["logger"] == "service.access"]


class Explodes:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/explode":
            raise RuntimeError("boom")
        await self.app(scope, receive, send)


@pytest_asyncio.fixture
async def exploding(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime.settings, runtime=runtime, middleware=[Middleware(Explodes)])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://statuscache") as http:
        yield http


async def test_an_answer_that_never_came_counts_as_a_500(exploding: httpx.AsyncClient, runtime: Runtime) -> None:
    await exploding.get("/explode")
    assert counts(runtime) == {(UNMATCHED, 500, CACHE_NONE): 1}


class PassesThrough:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@pytest.mark.parametrize("between", [False, True], ids=["shortcut", "through-middleware"])
@pytest.mark.slow
async def test_cached_describes_are_counted_and_identified_with_or_without_middleware_between(
    runtime: Runtime, aws_state: FakeAws, between: bool
) -> None:
    # Without middleware the outermost layer asks the fast path itself; with some, the fast path answers inside it.
    app = create_app(runtime.settings, runtime=runtime, middleware=[Middleware(PassesThrough)] if between else [])
    assert (app.shortcut is None) is between
    aws_state.create_image_stack(region=REGION, image_id="either-way")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://statuscache") as http:
        answers = [await http.get("/v3/images/custom/either-way") for _ in range(4)]
        revalidated = await http.get(
            "/v3/images/custom/either-way", headers={"If-None-Match": answers[-1].headers["etag"], "X-Request-ID": "r1"}
        )

    assert [answer.headers["x-cache"] for answer in answers] == ["MISS", "HIT", "HIT", "HIT"]
    assert len({answer.headers["x-request-id"] for answer in answers}) == 4
    assert (revalidated.status_code, revalidated.headers["x-request-id"]) == (304, "r1")
    assert counts(runtime) == {
        (DESCRIBE, 200, CACHE_MISS): 1, (DESCRIBE, 200, CACHE_HIT): 3, (DESCRIBE, 304, CACHE_NOT_MODIFIED): 1
    }


PREPARED_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}


class AnswersFromAConstant:
    """Sends one module-level start message for every request, as the change stream and the 401s do."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] != "/constant":
            await self.app(scope, receive, send)
            return
        await send(PREPARED_START)
        await send({"type": "http.response.body", "body": b"same"})


async def test_a_prepared_start_message_is_never_changed_by_the_request_id(runtime: Runtime) -> None:
    # It once was: every stream opened added one x-request-id to the shared start, until clients refused
    # a response of more than 100 headers.
    app = create_app(runtime.settings, runtime=runtime, middleware=[Middleware(AnswersFromAConstant)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://statuscache") as http:
        answers = [await http.get("/constant") for _ in range(3)]

    assert PREPARED_START["headers"] == [(b"content-type", b"text/plain")]
    assert [len(answer.headers.get_list("x-request-id")) for answer in answers] == [1, 1, 1]


LIST = "/v3/images/custom"


@pytest.mark.parametrize("between", [False, True], ids=["shortcut", "through-middleware"])
@pytest.mark.slow
async def test_remembered_list_pages_are_counted_under_their_route_with_or_without_middleware_between(
    runtime: Runtime, aws_state: FakeAws, between: bool
) -> None:
    # A remembered page is answered before the router, which is what names a route: the fast list names it.
    app = create_app(runtime.settings, runtime=runtime, middleware=[Middleware(PassesThrough)] if between else [])
    aws_state.create_ami(region=REGION, image_id="listed")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://statuscache") as http:
        await http.get("/v3/images/custom/listed")
        runtime.metrics.http_requests.clear()
        answers = [await http.get(LIST, params={"imageStatus": "AVAILABLE"}) for _ in range(3)]
        revalidated = await http.get(
            LIST, params={"imageStatus": "AVAILABLE"}, headers={"If-None-Match": answers[-1].headers["etag"]}
        )

    assert [answer.json()["images"][0]["imageId"] for answer in answers] == ["listed"] * 3
    assert len({answer.headers["x-request-id"] for answer in [*answers, revalidated]}) == 4
    assert revalidated.status_code == 304
    # The first builds the page (the router answers it); the others are answered from memory, counted alike.
    assert counts(runtime) == {
        (LIST, 200, CACHE_NONE): 1, (LIST, 200, CACHE_HIT): 2, (LIST, 304, CACHE_NOT_MODIFIED): 1
    }
