"""GET /v3/image-changes: the change stream, as Server-Sent Events, resumable with Last-Event-ID.

`id:` is the change sequence, `event: image` carries the new describe document and `event: gone`
says the image no longer exists. Every change reaches a client once, in sequence order. A client
resuming within the tailer's ring is served from memory; from further back, from the database until
the ring takes over. A stream ends cleanly when the process begins to shut down, or when its client
falls too far behind; the client reconnects (to any replica) with its Last-Event-ID and misses nothing.

Ten thousand streams stay open at once, so an open one is kept small: once it has been sent what it
missed, its request's task only waits for the client to leave (as a bare ASGI app holding a response open
would), its Watcher is handed to the fan-out, which writes to it when there is something to write
(service.api.watchers), and no layer in front of it holds a frame (StreamFront and the fast paths hand back
the stream's own coroutine; StreamFront also sends GETs past the router, whose frames held for the life of
a stream cost more than everything here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import request_error
from service.api.query import parse
from service.api.requests import header, parse_event_id, region_from, validate_image_id
from service.api.state import AppState
from service.api.tailer import StreamEvent, Tailer, TailerStopped, current, render
from service.api.watchers import End, Watcher, Watchers, body
from service.errors import AtCapacity, RequestError
from service.runtime import Runtime
from service.store import queries

PATH = "/v3/image-changes"
RETRY_AFTER_SECONDS = 5

START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ],
}
# The opening block's `id:` is where this stream starts: a client that loses the connection before the first
# change resumes from there (EventSource too: a block without data still sets its last event id).
OPENING = b"retry: 2000\nid: %d\n: connected\n\n"
OPENING_NO_ID = b"retry: 2000\n: connected\n\n"


@dataclass(frozen=True, slots=True)
class Opening:
    """A stream request that passed every check and was admitted: what it asked for."""

    runtime: Runtime
    region: str | None
    image_id: str | None
    # The Last-Event-ID: the client has every change up to it. None: start from now.
    after: int | None


class ChangeStream:
    """The route. Its clients share one tailer and one set of watchers per process (runtime)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.watchers = Watchers(backlog=state.settings.sse_client_backlog)
        self._tailer: Tailer | None = None

    def tailer(self, runtime: Runtime) -> Tailer:
        if self._tailer is None or self._tailer.runtime is not runtime:
            self._tailer = Tailer(runtime, self.watchers)
        return self._tailer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.run(self.open(scope), receive, send)

    def open(self, scope: Scope) -> Opening:
        """Check the request and admit it; raises RequestError (nothing has been sent yet). `run` must follow."""
        runtime = self.state.runtime
        settings = runtime.settings
        params = parse(scope["query_string"])
        region_param = params.get("region")
        region = region_from(region_param, settings) if region_param else None
        image_id = params.get("imageId")
        if image_id is not None:
            validate_image_id(image_id)
        last_event_id = header(scope, b"last-event-id") or params.get("lastEventId")
        after = parse_event_id(last_event_id) if last_event_id is not None else None
        if not self.watchers.admit(settings.sse_max_clients):
            raise AtCapacity(
                f"This server is serving its limit of {settings.sse_max_clients} change streams; "
                "retry later or connect to another replica.",
                retry_after=RETRY_AFTER_SECONDS,
            )
        return Opening(runtime, region, image_id, after)

    async def run(self, opening: Opening, receive: Receive, send: Send) -> None:
        """The stream of an admitted request: what it missed, then every change as it comes, until it ends."""
        watchers = self.watchers
        metrics = opening.runtime.metrics
        watcher: Watcher | None = None
        metrics.stream_clients += 1
        try:
            watcher = await self.catch_up(opening, send)
            if watcher is None:
                return
            watchers.hand_over(watcher, send)
            # Until the client leaves, or its stream has been written to the end (the server then says so too).
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            except asyncio.CancelledError:
                if watcher.failure is None:
                    raise
                raise watcher.failure from None
        finally:
            metrics.stream_clients -= 1
            if watcher is not None:
                watchers.release(watcher)
            watchers.leave()

    async def catch_up(self, opening: Opening, send: Send) -> Watcher | None:
        """The head, and every change the client missed; then the watcher receiving the rest, or None when the
        stream has already ended (shutdown began)."""
        runtime, region, image_id = opening.runtime, opening.region, opening.image_id
        tailer = self.tailer(runtime)
        try:
            await tailer.started()
        except TailerStopped:
            # Shutdown began before the tailer knew where the feed stands: end at once, resuming where asked.
            await send(START)
            await send(body(OPENING % opening.after if opening.after is not None else OPENING_NO_ID))
            await send(body(End.SHUTDOWN.value, more=False))
            return None
        position = tailer.cursor if opening.after is None else opening.after
        await send(START)
        await send(body(OPENING % position))
        while not tailer.ring.covers(position) and not runtime.draining.is_set():
            position = await replay_from_database(
                runtime, send, after=position, upto=tailer.cursor, region=region, image_id=image_id
            )
        if runtime.draining.is_set():
            await send(body(End.SHUTDOWN.value, more=False))
            return None
        # From here to `watch`, nothing awaits: the ring holds every change up to the cursor, and the
        # watcher receives every change after it.
        backlog = [event for event in tailer.ring.since(position) if event.matches(region, image_id)]
        watcher = self.watchers.watch(region=region, image_id=image_id, after=max(position, tailer.cursor))
        try:
            await send_events(runtime, send, backlog)
        except BaseException:
            self.watchers.release(watcher)
            raise
        return watcher


class StreamFront:
    """In front of the router: a GET of the stream goes straight to ChangeStream.run; anything else (other
    methods, other routes) goes on to the router. Errors are answered by the router's own handler."""

    def __init__(self, app: ASGIApp, route: ChangeStream) -> None:
        self.app = app
        self.route = route

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: it hands back the awaitable of whoever answers, so an open stream holds no frame here.
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "GET" or scope.get("root_path"):
            return self.app(scope, receive, send)
        try:
            opening = self.route.open(scope)
        except RequestError as exc:
            return refuse(scope, receive, send, exc)
        return self.route.run(opening, receive, send)


async def refuse(scope: Scope, receive: Receive, send: Send, exc: RequestError) -> None:
    response = await request_error(Request(scope, receive), exc)
    await response(scope, receive, send)


async def send_events(runtime: Runtime, send: Send, events: list[StreamEvent]) -> None:
    for start in range(0, len(events), queries.FEED_PAGE):
        page = [await current(runtime, event) for event in events[start : start + queries.FEED_PAGE]]
        await send(body(b"".join(page)))


async def replay_from_database(
    runtime: Runtime, send: Send, *, after: int, upto: int, region: str | None, image_id: str | None
) -> int:
    """Send one page of what the ring no longer holds; returns the position reached."""
    batch = await queries.revisions_after(
        runtime.engine, after=after, upto=upto, region=region, image_id=image_id
    )
    if batch:
        events = [await render(runtime, seq=revision.seq, image=revision.image) for revision in batch]
        await send(body(b"".join(event.data for event in events)))
    # A short page is the last: every revision up to `upto` that matches has been sent.
    return batch[-1].seq if len(batch) == queries.FEED_PAGE else upto
