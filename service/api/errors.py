"""Errors as pcluster's API shapes them: `{"message": ...}` with the status code, for every failure.

Anything that says "retry later" (429, and every 503: AWS unreachable, the database unavailable) carries
Retry-After. A database that cannot answer is a 503, answered by `DatabaseErrors` inside Starlette's own
error handling, so the connection stays open and nothing is logged per request (service.store.outage
logs the outage instead).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.state import AppState
from service.errors import AwsError, AwsThrottled, QueryTimeout, RequestError
from service.store import db

log = logging.getLogger(__name__)

JSON = "application/json"
UNEXPECTED = (
    "Unexpected fatal exception. Please look at the application logs for details on the encountered failure."
)
AWS_UNREACHABLE = "The image is not cached and AWS could not be reached; retry later."
DATABASE_UNAVAILABLE = "The cache's database is unavailable; retry later."
# Seconds a client is asked to wait: AWS throttling or failing, the database down (its probe runs every second).
AWS_RETRY_AFTER_SECONDS = 5
DATABASE_RETRY_AFTER_SECONDS = 5
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
    retry = {"Retry-After": str(AWS_RETRY_AFTER_SECONDS)}
    if isinstance(exc, AwsThrottled):
        return error_response(429, f"AWS is throttling requests: {exc.message}", headers=retry)
    return error_response(503, AWS_UNREACHABLE, headers=retry)


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


class DatabaseErrors:
    """A route that finds the database unavailable answers 503 with Retry-After, as any other answer.

    Pure ASGI, placed inside Starlette's error middleware: without it the error would reach the 500
    handler, which logs a traceback per request and re-raises to the server, which then closes the
    client's keep-alive connection. What counts as "unavailable" is decided in one place,
    service.store.db.unavailable; any other error goes on as before.
    """

    def __init__(self, app: ASGIApp, *, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            error = db.unavailable(exc)
            if error is None or started:
                raise
            runtime = self.state.opened
            if runtime is not None:
                runtime.outage.failed(error)
            response = error_response(
                503, DATABASE_UNAVAILABLE, headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)}
            )
            await response(scope, receive, send)


Handler = Callable[[Request, Exception], Awaitable[Response]]

HANDLERS: dict[Any, Handler] = {
    RequestError: request_error,
    AwsError: aws_error,
    QueryTimeout: query_timeout,
    HTTPException: http_error,
    Exception: unexpected,
}
