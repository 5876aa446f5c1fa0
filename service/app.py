"""Starlette routes, pcluster-shaped errors, and the lifespan that owns the runtime."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from email.utils import format_datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.errors import (
    AwsError,
    AwsThrottled,
    BadRequest,
    RequestError,
)
from service.lookup import Answer
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


async def describe_image(request: Request) -> Response:
    runtime = _runtime(request)
    image_id = request.path_params["image_id"]
    validate_image_id(image_id)
    region = resolve_region(request, runtime.settings)
    answer: Answer = await runtime.lookup.get(region=region, image_id=image_id)
    return await render_answer(request, runtime, answer)


async def render_answer(request: Request, runtime: Runtime, answer: Answer) -> Response:
    image = answer.image
    assert image.document is not None
    url, window = await runtime.signer.url(region=image.region, config=image.config)
    etag = etag_for(image, window if url is not None else None)
    headers = {
        "ETag": etag,
        "Last-Modified": format_datetime(image.changed_at, usegmt=True),
        "Age": str(max(0, math.floor(time.time() - image.confirmed_at.timestamp()))),
        "X-Cache": "HIT" if answer.hit else "MISS",
        "Cache-Control": "no-cache",
    }
    if if_none_match(request, etag):
        return Response(status_code=304, headers=headers)
    body = b'{"imageConfiguration":{"url":' + orjson.dumps(url or "NOT_AVAILABLE") + b"}," + image.document[1:]
    return Response(body, media_type=JSON, headers=headers)


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
            Route("/v3/images/custom/{image_id}", describe_image, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    if runtime is not None:
        app.state.runtime = runtime
    return app
