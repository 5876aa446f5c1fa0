"""The outermost middleware: a request id for every request, its counters and latency, and its log context.

Pure ASGI and cheap on purpose: it wraps the describe fast path too (~30,000 answers a second), so it
counts in plain ints (service.metrics) and allocates little. Inner layers say what they did by writing
into the scope: the route template (Starlette's router sets `scope["route"]`; the fast path sets
`ROUTE_KEY`), the cache outcome (`CACHE_KEY`) and, once authenticated, the caller (`CALLER_KEY`).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.state import AppState
from service.metrics import CACHE_NONE, CACHE_NOT_MODIFIED
from service.support.logs import CONTEXT

ROUTE_KEY = "statuscache.route"
CACHE_KEY = "statuscache.cache"
CALLER_KEY = "statuscache.caller"
REQUEST_ID_KEY = "statuscache.request_id"
REQUEST_ID_HEADER = b"x-request-id"
# The label of a request no route matched (404s of unknown paths): one series, whatever was asked.
UNMATCHED = "unmatched"
# A client's own id is kept when it is a plausible id; anything else (too long, spaces, control characters:
# log injection) is replaced by ours.
ACCEPTED_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")

access = logging.getLogger("service.access")


class RequestIds:
    """Unique ids without a random call per request: this process's random prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"


def client_request_id(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == REQUEST_ID_HEADER:
            text: str = value.decode("latin-1")
            return text if ACCEPTED_REQUEST_ID.match(text) else None
    return None


def route_of(scope: Scope) -> str:
    """The route's path template (a bounded set of label values), never the path asked for."""
    named: str | None = scope.get(ROUTE_KEY)
    if named is not None:
        return named
    route = scope.get("route")
    path: str | None = getattr(route, "path", None)
    return path if path is not None else UNMATCHED


class RequestFields(Mapping[str, Any]):
    """A request's fields for its log lines, read from the scope when a line is written (the caller is known
    only once the authentication layer, further in, has run)."""

    __slots__ = ("_scope",)

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def _items(self) -> dict[str, Any]:
        return {"request_id": self._scope.get(REQUEST_ID_KEY), "caller": self._scope.get(CALLER_KEY)}

    def __getitem__(self, key: str) -> Any:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return 2


class Instrument:
    def __init__(self, app: ASGIApp, *, state: AppState) -> None:
        self.app = app
        self.state = state
        self.ids = RequestIds()
        self.access_log = state.settings.access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = client_request_id(scope) or self.ids.next()
        scope[REQUEST_ID_KEY] = request_id
        header = (REQUEST_ID_HEADER, request_id.encode())
        status = 500  # an exception before any answer is a 500 (Starlette's outer error handler sends it)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = CONTEXT.set(RequestFields(scope))
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            self._count(scope, status, elapsed)
            if self.access_log:
                self._log(scope, status, elapsed)
            CONTEXT.reset(token)

    def _count(self, scope: Scope, status: int, elapsed: float) -> None:
        runtime = self.state.opened
        if runtime is None:
            return
        metrics = runtime.metrics
        route = route_of(scope)
        cache = CACHE_NOT_MODIFIED if status == 304 else scope.get(CACHE_KEY, CACHE_NONE)
        metrics.http_requests[(route, status, cache)] += 1
        metrics.http_latency[route].observe(elapsed)

    def _log(self, scope: Scope, status: int, elapsed: float) -> None:
        query = scope.get("query_string", b"").decode("latin-1")
        access.info(
            "%s %s%s %d %.1fms",
            scope["method"], scope["path"], f"?{query}" if query else "", status, elapsed * 1000,
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "route": route_of(scope),
                "cache": CACHE_NOT_MODIFIED if status == 304 else scope.get(CACHE_KEY, CACHE_NONE),
            },
        )
