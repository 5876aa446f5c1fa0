"""Starlette routes, pcluster-shaped errors, and the lifespan that owns the runtime."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.domain import describe, listing
from service.domain.models import IMAGE_ID_MAX_LENGTH, IMAGE_ID_PATTERN, REGION_PATTERN, CachedImage
from service.errors import (
    AwsError,
    AwsThrottled,
    BadRequest,
    BadToken,
    NotFound,
    RequestError,
)
from service.ingest.lookup import Answer, not_found_message
from service.runtime import Runtime
from service.settings import Settings
from service.store import queries

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
    return region_from(request.query_params.get("region"), settings)


def region_from(region: str | None, settings: Settings) -> str:
    if region is None or region == "":
        return settings.default_region
    if region in settings.regions:
        return region
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
    return etag_matches(request.headers.get("if-none-match"), etag)


def etag_matches(header: str | None, etag: str) -> bool:
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


class DescribeImage:
    """GET /v3/images/custom/{image_id}: a plain ASGI endpoint, because it is the hot path.

    A cached answer skips Starlette's Request/Response objects: the query string and the one header
    it needs are read straight from the scope, and the prepared bytes are sent as they are.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        runtime: Runtime = state.runtime
        image_id: str = scope["path_params"]["image_id"]
        validate_image_id(image_id)
        params = query_params(scope["query_string"])
        region = region_from(params.get("region"), runtime.settings)
        at = params.get("at")
        if at is not None:
            moment = parse_timestamp(at, name="at")
            past = await queries.image_at(runtime.engine, region=region, image_id=image_id, at=moment)
            if past is None or not past.exists:
                raise NotFound(not_found_message(image_id))
            answer = Answer(past, hit=True)
        else:
            # Recently read records are answered without awaiting anything.
            recent = runtime.lookup.recent(region=region, image_id=image_id)
            answer = Answer(recent, hit=True) if recent is not None else await runtime.lookup.get(
                region=region, image_id=image_id
            )
        image = answer.image
        memo: PreparedMemo = state.prepared
        prepared = await prepare(memo, runtime, image)
        await send_prepared(send, prepared, image=image, hit=answer.hit, if_none_match=_header(scope, b"if-none-match"))


def memo_key(runtime: Runtime, image: CachedImage) -> tuple[str, str, int, int | None]:
    return (image.region, image.image_id, image.version, runtime.signer.window() if image.config.signable else None)


async def send_prepared(
    send: Send, prepared: Prepared, *, image: CachedImage, hit: bool, if_none_match: str | None
) -> None:
    extra = [
        (b"age", b"%d" % max(0, int(time.time() - image.confirmed_at.timestamp()))),
        (b"x-cache", b"HIT" if hit else b"MISS"),
    ]
    if etag_matches(if_none_match, prepared.etag):
        await send({"type": "http.response.start", "status": 304, "headers": prepared.headers_304 + extra})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 200, "headers": prepared.headers_200 + extra})
        await send({"type": "http.response.body", "body": prepared.body})


DESCRIBE_PREFIX = "/v3/images/custom/"


class HotPath:
    """In front of the Starlette app: a describe whose record and answer bytes are both in memory is
    sent straight away. Anything else (a miss, `at=`, bad input, other routes) goes to Starlette,
    which answers it in full, so no behaviour lives only here.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and not scope.get("root_path")
            and scope["path"].startswith(DESCRIBE_PREFIX)
        ):
            image_id: str = scope["path"][len(DESCRIBE_PREFIX) :]
            runtime: Runtime | None = getattr(self.state, "runtime", None)
            if (
                runtime is not None
                and len(image_id) <= IMAGE_ID_MAX_LENGTH
                and IMAGE_ID_PATTERN.match(image_id)
                and image_id != "changes"
            ):
                params = query_params(scope["query_string"])
                region = params.get("region") or runtime.settings.default_region
                if "at" not in params and region in runtime.settings.regions:
                    image = runtime.lookup.recent(region=region, image_id=image_id)
                    if image is not None:
                        prepared = self.state.prepared.get(memo_key(runtime, image))
                        if prepared is not None:
                            await send_prepared(
                                send, prepared, image=image, hit=True, if_none_match=_header(scope, b"if-none-match")
                            )
                            return
        await self.app(scope, receive, send)


def query_params(raw: bytes) -> dict[str, str]:
    """The query string as Starlette reads it (last value wins), without its objects on the hot path."""
    if not raw:
        return {}
    text = raw.decode("latin-1")
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    params: dict[str, str] = {}
    for part in text.split("&"):
        if part:
            key, _, value = part.partition("=")
            params[key] = value
    return params


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


async def document_body(runtime: Runtime, image: CachedImage) -> bytes:
    """The served describe document: the stored one with the configuration URL signed now."""
    assert image.document is not None
    url, _ = await runtime.signer.url(region=image.region, config=image.config)
    body = b'{"imageConfiguration":{"url":' + orjson.dumps(describe.config_url(image.config, url)) + b"},"
    return body + image.document[1:]


RawHeaders = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Prepared:
    """A served answer's bytes and headers, the same for every request of one version and signing window."""

    body: bytes
    etag: str
    # Encoded once: Starlette would rebuild and re-encode them on every request.
    headers_200: RawHeaders
    headers_304: RawHeaders


PREPARED_MAX_ENTRIES = 20_000


PreparedMemo = dict[tuple[str, str, int, int | None], Prepared]


async def prepare(memo: PreparedMemo, runtime: Runtime, image: CachedImage) -> Prepared:
    key = memo_key(runtime, image)
    prepared = memo.get(key)
    if prepared is None:
        body = await document_body(runtime, image)
        etag = etag_for(image, key[3])
        validators = [
            (b"etag", etag.encode()),
            (b"last-modified", format_datetime(image.changed_at, usegmt=True).encode()),
            # Revalidate every time (a browser would otherwise guess a freshness from Last-Modified).
            (b"cache-control", b"no-cache"),
        ]
        prepared = Prepared(
            body=body,
            etag=etag,
            headers_200=[(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *validators],
            headers_304=validators,
        )
        if len(memo) >= PREPARED_MAX_ENTRIES:
            memo.clear()
        memo[key] = prepared
    return prepared


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
    except BadToken as exc:
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
    if image_status not in listing.IMAGE_STATUS_FILTERS:
        raise BadRequest(f"Bad Request: {image_status!r} is not one of ['AVAILABLE', 'PENDING', 'FAILED']")
    region = resolve_region(request, runtime.settings)
    token = request.query_params.get("nextToken")
    # A page is remembered like a record: dropped by any local write, kept at most read_cache_seconds.
    memo: dict[tuple[str, str, str | None], tuple[int, float, bytes, str]] = request.app.state.pages
    key = (region, image_status, token)
    remembered = memo.get(key)
    generation = runtime.lookup.generation
    if (
        remembered is not None
        and remembered[0] == generation
        and time.monotonic() - remembered[1] < runtime.settings.read_cache_seconds
    ):
        body, etag = remembered[2], remembered[3]
    else:
        # Clients polling the same page when it expires share one query.
        building: dict[tuple[str, str, str | None], asyncio.Task[tuple[bytes, str]]] = request.app.state.building
        task = building.get(key)
        if task is None:
            task = asyncio.create_task(_list_page(runtime, region=region, image_status=image_status, token=token))
            building[key] = task
            task.add_done_callback(lambda _done: building.pop(key, None))
        body, etag = await asyncio.shield(task)
        if len(memo) >= PREPARED_MAX_ENTRIES:
            memo.clear()
        memo[key] = (generation, time.monotonic(), body, etag)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=JSON, headers=headers)


async def _list_page(runtime: Runtime, *, region: str, image_status: str, token: str | None) -> tuple[bytes, str]:
    try:
        page = await queries.list_images(runtime.engine, region=region, image_status=image_status, next_token=token)
    except BadToken as exc:
        raise BadRequest("nextToken is not one this service issued") from exc
    document: dict[str, Any] = {"images": page.images}
    if page.next_token:
        document["nextToken"] = page.next_token
    return orjson.dumps(document), page.etag


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
        if len(batch) == queries.FEED_PAGE:
            continue
        await runtime.changes.wait(seconds=settings.sse_poll_seconds)
        if time.monotonic() - last_beat >= settings.sse_heartbeat_seconds:
            yield b": keepalive\n\n"
            last_beat = time.monotonic()


async def _change_event(runtime: Runtime, revision: queries.Revision) -> bytes:
    image = revision.image
    if image.exists and image.document is not None:
        data = await document_body(runtime, image)
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


class ImageIdConvertor(Convertor[str]):
    """A path segment, except "changes" (the change stream's path)."""

    regex = "(?!changes$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("image_id", ImageIdConvertor())


def create_app(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    open_runtime: Callable[[Settings], Any] | None = None,
) -> HotPath:
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
            # Everything loaded so far (modules, botocore's service models, the engine) lives as long as
            # the process: keep the garbage collector from walking it again on every full collection.
            gc.collect()
            gc.freeze()
            yield

    handlers: dict[Any, Handler] = {
        RequestError: _request_error,
        AwsError: _aws_error,
        HTTPException: _http_error,
        Exception: _unexpected,
    }
    app = Starlette(
        routes=[
            # First, as the hot path; its id never matches "changes", which is the stream's.
            Route("/v3/images/custom/{image_id:image_id}", DescribeImage(), methods=["GET"]),
            Route("/v3/images/custom/changes", change_stream, methods=["GET"]),
            Route("/v3/images/custom", list_images, methods=["GET"]),
            Route("/v3/images/custom/{image_id:image_id}/history", image_history, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.prepared = {}
    app.state.pages = {}
    app.state.building = {}
    if runtime is not None:
        app.state.runtime = runtime
    return HotPath(app)
