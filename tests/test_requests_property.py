"""Every bad input, generated: whatever arrives in any parameter of any route, the answer is never a 5xx,
a refused request makes no AWS call and writes nothing, and every error is a JSON `{"message": ...}`.

Requests go straight to the ASGI app (raw path and query bytes exactly as generated). The change stream's
Last-Event-ID / lastEventId are left to the stream's own tests (they belong to its bounded-clients work).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from service.api.app import StatusCacheApp, create_app
from service.aws import Aws
from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from service.settings import Settings
from service.store import db
from tests.conftest import REGION, mark_listed, stored_images

# Values that broke something once, or look like they might: out-of-range dates, non-ASCII digits, huge
# numbers, a trailing newline, NUL, percent signs, tokens that decode but were never issued.
NASTY = [
    "", " ", "\n", "abc\n", "abc%0A", "\x00", "a\x00b", "%", "%00", "%zz", "²", "١٢", "1" * 30, "-1", "0", "1e30",
    "10**20", "100000000000000000000", "NaN", "inf", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00",
    "0001-01-01", "9999-12-31T23:59:59Z", "2022-03-30T23:23:33Z", "2022-03-30T23:23:33.731+02:00", "2022-13-01",
    "us-east-1", "eu-west-1", "us-east-1\n", "US-EAST-1", "ap-south-1", "AVAILABLE", "PENDING", "FAILED",
    "eyJhZnRlciI6IngifQ", "WzFd", "MWUzMA", "eyJhZnRlciI6IngifQ.AAAA", "W/\"x\"", "*", "a" * 129, "a" * 5000,
    "real-image", "missing-image", "Ünïcödé", "😀", "../../etc/passwd", "a/b", "?x=1", "#frag",
]
# The specification, independent of the code under test: pcluster's id pattern matched in full, 128 at most.
VALID_ID = re.compile(r"[a-zA-Z][a-zA-Z0-9-]{1,127}")
values = st.one_of(st.sampled_from(NASTY), st.text(max_size=40), st.text(alphabet="0123456789²-+:TZ.eE", max_size=30))


@dataclass(frozen=True)
class Route:
    path: str  # with {id} where the image id goes
    query: tuple[str, ...]
    headers: tuple[str, ...] = ()


ROUTES = [
    Route("/v3/images/custom/{id}", ("region", "at"), ("if-none-match", "if-modified-since")),
    Route("/v3/images/custom", ("imageStatus", "region", "nextToken"), ("if-none-match",)),
    Route("/v3/images/custom/{id}/history", ("region", "since", "until", "limit", "nextToken")),
    Route("/v3/image-changes", ("region", "imageId")),
    Route("/healthz", ()),
    Route("/readyz", ()),
    Route("/stats", ()),
    Route("/openapi.json", ()),
]


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, list[tuple[bytes, bytes]]]:
    route = draw(st.sampled_from(ROUTES))
    path = route.path.replace("{id}", draw(values))
    params = [(name, draw(values)) for name in route.query if draw(st.booleans())]
    if draw(st.booleans()):
        params.append((draw(st.sampled_from(["x", "limit", "at", "region", "imageStatus"])), draw(values)))
    headers = [
        (name.encode(), draw(values).encode("utf-8")) for name in route.headers if draw(st.booleans())
    ]
    return path, urlencode(params, quote_via=quote).encode(), headers


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes


async def call(app: StatusCacheApp, path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> Answer:
    """One request straight to the ASGI app; a stream is judged by its start and then cut."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": quote(path).encode(), "query_string": query, "root_path": "",
        "headers": [(b"host", b"statuscache"), *headers], "client": ("127.0.0.1", 1), "server": ("statuscache", 80),
    }  # fmt: skip
    started: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
    body = bytearray()
    answer = Answer(0, "", b"")

    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if requested:
            # The request has no more to say and the client never leaves: wait until cut.
            await asyncio.Event().wait()
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.content_type = dict(message["headers"]).get(b"content-type", b"").decode()
            if answer.content_type.startswith("text/event-stream") and not started.done():
                started.set_result(answer)
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            if not message.get("more_body") and not started.done():
                answer.body = bytes(body)
                started.set_result(answer)

    task = asyncio.create_task(app(scope, receive, send))
    try:
        return await asyncio.wait_for(started, timeout=30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def loop_runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


def sweep() -> Iterator[tuple[str, bytes, list[tuple[bytes, bytes]]]]:
    """Every nasty value in every parameter of every route, the other parameters valid: the findings, surely."""
    valid = {"imageStatus": "AVAILABLE", "region": REGION}
    for route in ROUTES:
        for value in NASTY:
            if "{id}" in route.path:
                yield route.path.replace("{id}", value), b"", []
            for name in route.query:
                params = {**{key: valid[key] for key in route.query if key in valid}, name: value}
                yield route.path.replace("{id}", "real-image"), urlencode(params, quote_via=quote).encode(), []
            for header_name in route.headers:
                yield route.path.replace("{id}", "real-image"), b"", [(header_name.encode(), value.encode())]


@pytest.mark.slow
def test_no_input_gets_a_5xx_an_aws_call_when_refused_or_an_error_without_message(
    settings: Settings, aws_state: FakeAws, loop_runner: asyncio.Runner
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="real-image")
    runtime = Runtime.build(settings, engine=db.create_engine(settings), aws=Aws())
    # Listed, as a serving deployment's regions are (before its first pass a list answers 503 on purpose).
    loop_runner.run(mark_listed(runtime))
    app = create_app(settings, runtime=runtime)

    def check(request: tuple[str, bytes, list[tuple[bytes, bytes]]]) -> None:
        path, query, headers = request
        before = loop_runner.run(stored_images(runtime))
        aws_state.reset_calls()
        answer = loop_runner.run(call(app, path, query, headers))
        assert answer.status < 500, (request, answer)
        if answer.status >= 400:
            assert answer.content_type == "application/json", (request, answer)
            message = json.loads(answer.body)
            assert isinstance(message, dict) and isinstance(message.get("message"), str), (request, answer)
        if answer.status == 400:
            # Refused: it reached neither AWS nor the database's tables.
            assert aws_state.total_calls() == 0, (request, answer, aws_state.calls)
            assert loop_runner.run(stored_images(runtime)) == before, (request, answer)
        if aws_state.total_calls():
            # Only a describe of an id pcluster accepts, in a region served here, ever goes to AWS.
            image_id = path.removeprefix("/v3/images/custom/")
            region = dict(parse_qsl(query.decode())).get("region") or REGION
            assert path.startswith("/v3/images/custom/") and VALID_ID.fullmatch(image_id), (request, answer)
            assert region in settings.regions, (request, answer)

    try:
        for request in sweep():
            check(request)
        examples = int(os.environ.get("PROPERTY_EXAMPLES", "300"))
        hypothesis_settings(
            max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )(given(request=requests())(check))()
    finally:
        loop_runner.run(runtime.close())
