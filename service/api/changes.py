"""GET /v3/image-changes: the change stream, as Server-Sent Events, resumable with Last-Event-ID.

`id:` is the change sequence, `event: image` carries the new describe document and `event: gone`
says the image no longer exists. A stream ends cleanly when the process begins to shut down; the
client reconnects (to another replica) with its Last-Event-ID and misses nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from service.api.describe import document_body
from service.api.requests import region_from, validate_image_id
from service.api.state import AppState
from service.errors import BadRequest
from service.ingest.lookup import not_found_message
from service.runtime import Runtime
from service.store import queries

PATH = "/v3/image-changes"


class ChangeStream:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def endpoint(self, request: Request) -> Response:
        runtime = self.state.runtime
        region_param = request.query_params.get("region")
        region = region_from(region_param, runtime.settings) if region_param else None
        image_id = request.query_params.get("imageId")
        if image_id is not None:
            validate_image_id(image_id)
        last_event_id = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
        if last_event_id is not None and not last_event_id.isdigit():
            raise BadRequest(f"Last-Event-ID must be a change sequence number; got {last_event_id!r}")
        start = int(last_event_id) if last_event_id is not None else await queries.latest_seq(runtime.engine)
        return StreamingResponse(
            change_events(runtime, after=start, region=region, image_id=image_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def change_events(
    runtime: Runtime, *, after: int, region: str | None, image_id: str | None
) -> AsyncIterator[bytes]:
    # Pull-based: each client reads the revisions table at its own pace, so a slow client holds up
    # nobody; the table is shared, so changes made by any replica reach every client.
    settings = runtime.settings
    runtime.metrics.stream_clients += 1
    try:
        # The opening block's `id:` is where this stream starts: a client that loses the connection before the
        # first change resumes from there (EventSource too: a block without data still sets its last event id).
        yield b"retry: 2000\nid: %d\n: connected\n\n" % after
        last_beat = time.monotonic()
        cursor = after
        while not runtime.draining.is_set():
            batch = await queries.revisions_after(runtime.engine, after=cursor, region=region, image_id=image_id)
            for revision in batch:
                cursor = revision.seq
                yield await change_event(runtime, revision)
                last_beat = time.monotonic()
            if len(batch) == queries.FEED_PAGE:
                continue
            await runtime.changes.wait(seconds=settings.sse_poll_seconds)
            if time.monotonic() - last_beat >= settings.sse_heartbeat_seconds:
                yield b": keepalive\n\n"
                last_beat = time.monotonic()
        # The process is shutting down: end the stream; the client resumes elsewhere from its Last-Event-ID.
        yield b": shutting down\n\n"
    finally:
        runtime.metrics.stream_clients -= 1


async def change_event(runtime: Runtime, revision: queries.Revision) -> bytes:
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
