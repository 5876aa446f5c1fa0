"""Starlette routes, pcluster-shaped errors, and the lifespan that owns the runtime."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from service import queries
from service.errors import (
    AwsError,
    AwsThrottled,
    BadRequest,
    NotFound,
    RequestError,
)
from service.lookup import Answer, not_found_message
from service.models import IMAGE_ID_MAX_LENGTH, IMAGE_ID_PATTERN, REGION_PATTERN, CachedImage
from service.runtime import Runtime
from service.settings import Settings

log = logging.getLogger(__name__)

JSON = "application/json"
UNEXPECTED = (
    "Unexpected fatal exception. Please look at the application logs for details on the encountered failure."
)


def error_response(status_code: int, message: str, *, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"message": message}), status_code=status_code, media_type=JSON, headers=headers)


def validate_image_id(image_id: str) -> None:
    # Messages as pcluster's API (connexion) words them.
    if len(image_id) > IMAGE_ID_MAX_LENGTH:
        raise BadRequest(f"Bad Request: {image_id!r} is too long")
    if not IMAGE_ID_PATTERN.match(image_id):
        raise BadRequest(f"Bad Request: {image_id!r} does not match '{IMAGE_ID_PATTERN.pattern}'")


def resolve_region(request: Request, settings: Settings) -> str:
    region = request.query_params.get("region")
    if region is None or region == "":
        return settings.default_region
    if not REGION_PATTERN.match(region):
        raise BadRequest(f"invalid or unsupported region '{region}'")
    if region not in settings.regions:
        raise BadRequest(
            f"region '{region}' is not served here; configured regions: {', '.join(settings.regions)}"
        )
    return region


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def etag_for(image: CachedImage, window: int | None) -> str:
    # The signing window is part of the tag: a client revalidating after it gets a freshly signed URL.
    return f'"{image.version}.{window}"' if window is not None else f'"{image.version}"'


def if_none_match(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    candidates = {part.strip() for part in header.split(",")}
    return etag in candidates or "*" in candidates


def parse_timestamp(value: str, *, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadRequest(
            f"{name} must be an ISO 8601 timestamp, e.g. 2022-03-30T23:23:33Z; got {value!r}"
        ) from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def describe_image(request: Request) -> Response:
    runtime = _runtime(request)
    image_id = request.path_params["image_id"]
    validate_image_id(image_id)
    region = resolve_region(request, runtime.settings)
    at = request.query_params.get("at")
    if at is not None:
        moment = parse_timestamp(at, name="at")
        past = await queries.image_at(runtime.engine, region=region, image_id=image_id, at=moment)
        if past is None or not past.exists:
            raise NotFound(not_found_message(image_id))
        return await render_answer(request, runtime, Answer(past, hit=True))
    answer: Answer = await runtime.lookup.get(region=region, image_id=image_id)
    return await render_answer(request, runtime, answer)


async def document_body(runtime: Runtime, image: CachedImage) -> tuple[bytes, str | None, int]:
    """The served describe document: the stored one with the configuration URL signed now."""
    assert image.document is not None
    url, window = await runtime.signer.url(region=image.region, config=image.config)
    body = b'{"imageConfiguration":{"url":' + orjson.dumps(url or "NOT_AVAILABLE") + b"}," + image.document[1:]
    return body, url, window


@dataclass(frozen=True)
class Prepared:
    """A served answer's bytes and validators, the same for every request of one version and signing window."""

    body: bytes
    etag: str
    last_modified: str


PREPARED_MAX_ENTRIES = 20_000


async def prepare(request: Request, runtime: Runtime, image: CachedImage) -> Prepared:
    memo: dict[tuple[str, str, int, int | None], Prepared] = request.app.state.prepared
    window = runtime.signer.window() if image.config.signable else None
    key = (image.region, image.image_id, image.version, window)
    prepared = memo.get(key)
    if prepared is None:
        body, _, _ = await document_body(runtime, image)
        prepared = Prepared(body, etag_for(image, window), format_datetime(image.changed_at, usegmt=True))
        if len(memo) >= PREPARED_MAX_ENTRIES:
            memo.clear()
        memo[key] = prepared
    return prepared


async def render_answer(request: Request, runtime: Runtime, answer: Answer) -> Response:
    image = answer.image
    prepared = await prepare(request, runtime, image)
    headers = {
        "ETag": prepared.etag,
        "Last-Modified": prepared.last_modified,
        "Age": str(max(0, int(time.time() - image.confirmed_at.timestamp()))),
        "X-Cache": "HIT" if answer.hit else "MISS",
        "Cache-Control": "no-cache",
    }
    if if_none_match(request, prepared.etag):
        return Response(status_code=304, headers=headers)
    return Response(prepared.body, media_type=JSON, headers=headers)


def _limit(request: Request, *, default: int, maximum: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise BadRequest(f"limit must be a whole number from 1 to {maximum}; got {raw!r}")
    return int(raw)


async def image_history(request: Request) -> Response:
    runtime = _runtime(request)
    image_id = request.path_params["image_id"]
    validate_image_id(image_id)
    region = resolve_region(request, runtime.settings)
    since = request.query_params.get("since")
    until = request.query_params.get("until")
    try:
        page = await queries.history(
            runtime.engine,
            region=region,
            image_id=image_id,
            since=parse_timestamp(since, name="since") if since else None,
            until=parse_timestamp(until, name="until") if until else None,
            limit=_limit(request, default=100, maximum=1000),
            next_token=request.query_params.get("nextToken"),
        )
    except queries.BadToken as exc:
        raise BadRequest("nextToken is not one this service issued") from exc
    if not page.known:
        raise NotFound(not_found_message(image_id))
    body: dict[str, Any] = {"imageId": image_id, "region": region, "transitions": page.transitions}
    if page.next_token:
        body["nextToken"] = page.next_token
    return Response(orjson.dumps(body), media_type=JSON)


async def list_images(request: Request) -> Response:
    runtime = _runtime(request)
    image_status = request.query_params.get("imageStatus")
    if image_status is None:
        raise BadRequest("Bad Request: Missing query parameter 'imageStatus'")
    if image_status not in queries.IMAGE_STATUS_FILTERS:
        raise BadRequest(f"Bad Request: {image_status!r} is not one of ['AVAILABLE', 'PENDING', 'FAILED']")
    region = resolve_region(request, runtime.settings)
    try:
        page = await queries.list_images(
            runtime.engine, region=region, image_status=image_status, next_token=request.query_params.get("nextToken")
        )
    except queries.BadToken as exc:
        raise BadRequest("nextToken is not one this service issued") from exc
    headers = {"ETag": page.etag, "Cache-Control": "no-cache"}
    if if_none_match(request, page.etag):
        return Response(status_code=304, headers=headers)
    body: dict[str, Any] = {"images": page.images}
    if page.next_token:
        body["nextToken"] = page.next_token
    return Response(orjson.dumps(body), media_type=JSON, headers=headers)


async def change_stream(request: Request) -> Response:
    """Server-Sent Events: `id:` the change sequence, `data:` the new describe document."""
    runtime = _runtime(request)
    region_param = request.query_params.get("region")
    region = resolve_region(request, runtime.settings) if region_param else None
    image_id = request.query_params.get("imageId")
    if image_id is not None:
        validate_image_id(image_id)
    last_event_id = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    if last_event_id is not None and not last_event_id.isdigit():
        raise BadRequest(f"Last-Event-ID must be a change sequence number; got {last_event_id!r}")
    start = int(last_event_id) if last_event_id is not None else await queries.latest_seq(runtime.engine)
    return StreamingResponse(
        _change_events(runtime, after=start, region=region, image_id=image_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _change_events(
    runtime: Runtime, *, after: int, region: str | None, image_id: str | None
) -> AsyncIterator[bytes]:
    # Pull-based: each client reads the revisions table at its own pace, so a slow client holds up
    # nobody; the table is shared, so changes made by any replica reach every client.
    settings = runtime.settings
    yield b"retry: 2000\n: connected\n\n"
    last_beat = time.monotonic()
    cursor = after
    while True:
        batch = await queries.revisions_after(runtime.engine, after=cursor, region=region, image_id=image_id)
        for revision in batch:
            cursor = revision.seq
            yield await _change_event(runtime, revision)
            last_beat = time.monotonic()
        if len(batch) == 100:
            continue
        await runtime.changes.wait(seconds=settings.sse_poll_seconds)
        if time.monotonic() - last_beat >= settings.sse_heartbeat_seconds:
            yield b": keepalive\n\n"
            last_beat = time.monotonic()


async def _change_event(runtime: Runtime, revision: queries.Revision) -> bytes:
    image = revision.image
    if image.exists and image.document is not None:
        data, _, _ = await document_body(runtime, image)
        kind = b"image"
    else:
        data = orjson.dumps(
            {"imageId": image.image_id, "region": image.region, "message": not_found_message(image.image_id)}
        )
        kind = b"gone"
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (revision.seq, kind, data)


async def stats(request: Request) -> Response:
    runtime = _runtime(request)
    return Response(orjson.dumps(runtime.stats()), media_type=JSON)


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type=JSON)


async def readyz(request: Request) -> Response:
    runtime = _runtime(request)
    checks = await runtime.readiness()
    ready = all(checks.values())
    return Response(
        orjson.dumps({"ready": ready, "checks": checks}), status_code=200 if ready else 503, media_type=JSON
    )


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))} if exc.retry_after else None
    return error_response(exc.status_code, exc.message, headers=headers)


async def _aws_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AwsError)
    log.warning("AWS could not answer %s: %s (%s)", request.url.path, exc.message, exc.code)
    if isinstance(exc, AwsThrottled):
        return error_response(429, f"AWS is throttling requests: {exc.message}", headers={"Retry-After": "5"})
    return error_response(503, "The image is not cached and AWS could not be reached; retry later.")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = (
            "The requested URL was not found on the server. If you entered the URL manually please check "
            "your spelling and try again."
        )
    else:
        message = exc.detail
    return error_response(exc.status_code, message, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return error_response(500, UNEXPECTED)


Handler = Callable[[Request, Exception], Awaitable[Response]]


def create_app(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    open_runtime: Callable[[Settings], Any] | None = None,
) -> Starlette:
    """The ASGI app. With `runtime` given (tests, the runner) it is used as is; otherwise the lifespan opens one."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            yield
            return
        opener = open_runtime or (lambda s: Runtime.open(s, poll=True))
        async with opener(settings) as opened:
            app.state.runtime = opened
            yield

    handlers: dict[Any, Handler] = {
        RequestError: _request_error,
        AwsError: _aws_error,
        HTTPException: _http_error,
        Exception: _unexpected,
    }
    app = Starlette(
        routes=[
            Route("/v3/images/custom", list_images, methods=["GET"]),
            # Before the describe route: "changes" would otherwise be taken for an image id.
            Route("/v3/images/custom/changes", change_stream, methods=["GET"]),
            Route("/v3/images/custom/{image_id}", describe_image, methods=["GET"]),
            Route("/v3/images/custom/{image_id}/history", image_history, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.prepared = {}
    if runtime is not None:
        app.state.runtime = runtime
    return app
