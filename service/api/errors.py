"""Errors as pcluster's API shapes them: `{"message": ...}` with the status code, for every failure."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.errors import AwsError, AwsThrottled, QueryTimeout, RequestError

log = logging.getLogger(__name__)

JSON = "application/json"
UNEXPECTED = (
    "Unexpected fatal exception. Please look at the application logs for details on the encountered failure."
)
NOT_FOUND_ROUTE = (
    "The requested URL was not found on the server. If you entered the URL manually please check "
    "your spelling and try again."
)


def error_response(status_code: int, message: str, *, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"message": message}), status_code=status_code, media_type=JSON, headers=headers)


async def request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))} if exc.retry_after else None
    return error_response(exc.status_code, exc.message, headers=headers)


async def aws_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AwsError)
    log.warning("AWS could not answer %s: %s (%s)", request.url.path, exc.message, exc.code)
    if isinstance(exc, AwsThrottled):
        return error_response(429, f"AWS is throttling requests: {exc.message}", headers={"Retry-After": "5"})
    return error_response(503, "The image is not cached and AWS could not be reached; retry later.")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = NOT_FOUND_ROUTE if exc.status_code == 404 else exc.detail
    return error_response(exc.status_code, message, headers=exc.headers)


async def query_timeout(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QueryTimeout)
    state = getattr(request.app.state, "statuscache", None)
    if state is not None and state.opened is not None:
        state.opened.metrics.history_timeouts += 1
    log.warning("history query on %s cut off after %gs", request.url.path, exc.seconds)
    return error_response(503, str(exc))


async def unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return error_response(500, UNEXPECTED)


Handler = Callable[[Request, Exception], Awaitable[Response]]

HANDLERS: dict[Any, Handler] = {
    RequestError: request_error,
    AwsError: aws_error,
    QueryTimeout: query_timeout,
    HTTPException: http_error,
    Exception: unexpected,
}
