"""The outermost middleware: a request id for every request, its count and latency, and its log context.

Pure ASGI and frugal on purpose: it wraps the describe fast path too (~30,000 answers a second on two
cores), so everything here is a handful of dict and list operations, counted in plain ints
(service.metrics), with no prometheus-client object and no lock. Inner layers say what they did by
writing into the scope: the route template (Starlette's router sets `scope["route"]`; the fast path sets
ROUTE_KEY), the cache outcome (CACHE_KEY) and, once authenticated, the caller (CALLER_KEY).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.state import AppState
from service.metrics import CACHE_NONE, CACHE_NOT_MODIFIED, KeyedHistograms
from service.support.logs import CONTEXT

ROUTE_KEY = "statuscache.route"
CACHE_KEY = "statuscache.cache"
CALLER_KEY = "statuscache.caller"
REQUEST_ID_KEY = "statuscache.request_id"
STATUS_KEY = "statuscache.status"
REQUEST_ID_HEADER = b"x-request-id"
# The request's fields in every log line it causes: (field, scope key), read when a line is written.
LOG_FIELDS = (("request_id", REQUEST_ID_KEY), ("caller", CALLER_KEY))
# The label of a request no route matched (404s of unknown paths): one series, whatever was asked.
UNMATCHED = "unmatched"
# A client's own id is kept when it looks like an id; anything else (too long, spaces, control characters that
# would forge log lines) is replaced by ours.
ACCEPTED_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")

access = logging.getLogger("service.access")


def labels(scope: Scope, status: int) -> tuple[str, int, str]:
    """A request's counter labels: its route's path template (a bounded set of values, never the path asked
    for), its status, and its cache outcome."""
    route: str = scope[ROUTE_KEY] if ROUTE_KEY in scope else getattr(scope.get("route"), "path", UNMATCHED)
    return route, status, CACHE_NOT_MODIFIED if status == 304 else scope.get(CACHE_KEY, CACHE_NONE)


_clock = time.perf_counter


# A synchronous answer from further in, when nothing stands between: (status, headers, body), or None.
FastAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]
Shortcut = Callable[[Scope], FastAnswer | None]


class FastPath:
    """A layer in front of the router that answers some requests from memory, synchronously (`answer`: the
    status, headers and body, or None to pass the request on to `app`). Being synchronous is what lets the
    outermost layer ask it directly when nothing stands between them (its `shortcut`)."""

    app: ASGIApp

    def answer(self, scope: Scope) -> FastAnswer | None:
        raise NotImplementedError

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: it hands back the awaitable of whoever answers, so a long response further in (the
        # change stream) holds no frame of this layer for its whole life.
        answer = self.answer(scope)
        if answer is None:
            return self.app(scope, receive, send)
        return send_answer(send, answer)


async def send_answer(send: Send, answer: FastAnswer) -> None:
    """Send a whole answer: its status and headers, then its body."""
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def request_context(scope: Scope) -> Iterator[None]:
    """Lines logged in the block carry the request's fields (its id, its caller), as every line of a request the
    app answers through ASGI does."""
    token = CONTEXT.set((scope, LOG_FIELDS))
    try:
        yield
    finally:
        CONTEXT.reset(token)


class SendWithId:
    """A request's `send`, adding its request id to the response's head and noting its status in the scope.

    An object with slots, not a closure: a change stream holds its `send` for its whole life (a closure and its
    cells cost 0.3 KB a stream, this 64 bytes). Not a coroutine: it hands back the awaitable of the `send` it
    wraps, one frame fewer per message.
    """

    __slots__ = ("header", "scope", "send")

    def __init__(self, send: Send, scope: Scope, header: tuple[bytes, bytes]) -> None:
        self.send = send
        self.scope = scope
        self.header = header

    def __call__(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self.scope[STATUS_KEY] = message["status"]
            # A new message: the one passed may be a prepared constant (the stream's start, a 401), and
            # appending to it would grow every later response's headers by one.
            message = {**message, "headers": [*message.get("headers", ()), self.header]}
        return self.send(message)


class Instrument:
    """Request ids, counters and latency, log context, for every request.

    With `shortcut` (the synchronous answers from memory, through the layers between: service.api.app), a request
    it answers is decided by `answer_now` and sent by whoever asked (this layer, or the connection itself without
    an ASGI task: service.api.connections): no wrapped `send`, no coroutine of the layers inside. Everything else
    goes through `app` with `send` wrapped.
    """

    def __init__(self, app: ASGIApp, *, state: AppState, shortcut: Shortcut | None = None) -> None:
        self.app = app
        self.state = state
        self.shortcut = shortcut
        self.access_log = state.settings.access_log
        # Unique ids without a random call per request: this process's random prefix and a counter.
        self._prefix = os.urandom(6).hex().encode() + b"-"
        self._counter = itertools.count(1)
        # The runtime counted in last, and its table: looked up again only when the runtime changes.
        self._counted_in: object = None
        self._requests: KeyedHistograms[tuple[str, int, str]] | None = None

    def request_id(self, scope: Scope) -> bytes:
        """The request's id (the client's own when it looks like an id, else a new one), noted in the scope."""
        request_id = scope.get(REQUEST_ID_KEY)
        if request_id is None:
            for key, value in scope["headers"]:
                if key == REQUEST_ID_HEADER:
                    if ACCEPTED_REQUEST_ID.match(value):
                        request_id = value
                    break
            if request_id is None:
                request_id = self._prefix + b"%x" % next(self._counter)
            scope[REQUEST_ID_KEY] = request_id
        return request_id

    def answer_now(self, scope: Scope) -> tuple[FastAnswer, float] | None:
        """The one decision on a request answered from memory: (status, headers, body) with its request id last,
        and the clock when the decision began; None when the app must answer it (or no shortcut is given).

        Whoever sends the answer (`__call__`, or the connection itself: service.api.connections) then calls
        `answered`. A layer that logs on the way (an admitted caller) does it in `request_context`."""
        shortcut = self.shortcut
        if shortcut is None or scope["type"] != "http":
            return None
        started = _clock()
        request_id = self.request_id(scope)
        answer = shortcut(scope)
        if answer is None:
            return None
        answer[1].append((REQUEST_ID_HEADER, request_id))  # a list made for this answer alone
        scope[STATUS_KEY] = answer[0]
        return answer, started

    def answered(self, scope: Scope, status: int, started: float) -> None:
        """Count an answer `answer_now` gave, once sent."""
        # A fast path names its route and cache outcome itself: the labels without `labels`.
        cache = CACHE_NOT_MODIFIED if status == 304 else scope[CACHE_KEY]
        self._count(scope, status, _clock() - started, (scope[ROUTE_KEY], status, cache))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        now = self.answer_now(scope)
        if now is not None:
            (status, headers, body), started = now
            try:
                # send_answer's two messages, without its coroutine frame.
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            finally:
                self.answered(scope, status, started)
            return

        header = (REQUEST_ID_HEADER, self.request_id(scope))
        token = CONTEXT.set((scope, LOG_FIELDS))
        started = _clock()
        try:
            await self.app(scope, receive, SendWithId(send, scope, header))
        finally:
            elapsed = _clock() - started
            CONTEXT.reset(token)
            # No answer sent means an exception escaped: Starlette's outermost handler answered 500.
            self._count(scope, scope.get(STATUS_KEY, 500), elapsed)

    def _count(
        self, scope: Scope, status: int, elapsed: float, key: tuple[str, int, str] | None = None
    ) -> None:
        """Count the request (its labels: `key`, or `labels` when not given) and log it if asked to."""
        runtime = self.state.opened
        if runtime is not self._counted_in:
            self._counted_in = runtime
            self._requests = runtime.metrics.http_requests if runtime is not None else None
        requests = self._requests
        if requests is not None:
            histogram = requests[key or labels(scope, status)]
            histogram.counts[bisect_left(histogram.buckets, elapsed)] += 1
            histogram.sum += elapsed
        if self.access_log:
            self._log(scope, status, elapsed)

    def _log(self, scope: Scope, status: int, elapsed: float) -> None:
        query = scope.get("query_string", b"").decode("latin-1")
        route, _, cache = labels(scope, status)
        token = CONTEXT.set((scope, LOG_FIELDS))
        try:
            access.info(
                "%s %s%s %d %.1fms",
                scope["method"], scope["path"], f"?{query}" if query else "", status, elapsed * 1000,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "route": route,
                    "cache": cache,
                },
            )
        finally:
            CONTEXT.reset(token)
