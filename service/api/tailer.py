"""The one reader of the change feed in a process: it tails the revisions table, keeps the latest changes in a
ring, and hands each one to the connected clients (service.api.watchers).

It wakes at once for this process's own writes (the runtime's change signal) and every
STATUSCACHE_SSE_POLL_SECONDS for other replicas', so it costs one query per interval however many clients
are connected. A change's event is built once for all of them; again only for a client that replays it
from the ring after the signing window turned, so no client is handed a URL older than a describe's.
It starts with the first client and runs until the process drains, when every stream ends.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

import orjson

from service.api.describe import document_body
from service.api.watchers import WAKE_BATCH, End, Watchers
from service.domain.models import CachedImage
from service.ingest.lookup import not_found_message
from service.runtime import Runtime
from service.store import queries
from service.support.loops import Backoff, Loop
from service.support.ring import Ring

log = logging.getLogger(__name__)

# How often idle clients are looked at for a heartbeat (each gets one every STATUSCACHE_SSE_HEARTBEAT_SECONDS).
BEAT_SECONDS = 1.0


@dataclass(slots=True)
class StreamEvent:
    """One change as the stream sends it: `id:`, `event:` (image or gone) and `data:`, in `data`."""

    seq: int
    image: CachedImage
    # The signing window the configuration URL in `data` belongs to; None when `data` holds no URL.
    window: int | None
    data: bytes

    def matches(self, region: str | None, image_id: str | None) -> bool:
        return (region is None or region == self.image.region) and (image_id is None or image_id == self.image.image_id)


async def render(runtime: Runtime, *, seq: int, image: CachedImage) -> StreamEvent:
    """The event for revision `seq`: the describe document as served now, or `gone`."""
    if image.exists and image.document is not None:
        window = runtime.signer.window() if image.config.signable else None
        data = await document_body(runtime, image)
        kind = b"image"
    else:
        window = None
        data = orjson.dumps(
            {"imageId": image.image_id, "region": image.region, "message": not_found_message(image.image_id)}
        )
        kind = b"gone"
    return StreamEvent(seq, image, window, b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, kind, data))


async def current(runtime: Runtime, event: StreamEvent) -> bytes:
    """The event's bytes, built again (and kept) if its URL was signed in an earlier window."""
    if event.window is not None and event.window != runtime.signer.window():
        fresh = await render(runtime, seq=event.seq, image=event.image)
        event.window, event.data = fresh.window, fresh.data
    return event.data


class TailerStopped(Exception):
    """The tailer stopped (shutdown began) before it knew where the change feed stands."""


class Tailer:
    """Reads every new revision once, remembers the last `sse_ring_size` of them, and publishes each to `watchers`.

    `cursor` (the ring's last number) is how far it has read: every revision up to it is in the database
    and, from `ring.floor` on, in the ring.
    """

    def __init__(self, runtime: Runtime, watchers: Watchers) -> None:
        self.runtime = runtime
        self.watchers = watchers
        self.ring: Ring[StreamEvent] = Ring(runtime.settings.sse_ring_size, start=0)
        self._ready: asyncio.Future[None] | None = None

    @property
    def cursor(self) -> int:
        return self.ring.last

    async def started(self) -> None:
        """Start tailing (the first caller), and return once the starting position is known."""
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            self.runtime.start(self._tail(self._ready), name="change-tailer")
            self.runtime.start(self._beat(), name="change-heartbeat")
        # Shielded: a client that leaves while waiting must not cancel the start for the others.
        await asyncio.shield(self._ready)

    async def _tail(self, ready: asyncio.Future[None]) -> None:
        settings = self.runtime.settings

        async def step() -> float:
            if not ready.done():
                # Clients connecting without Last-Event-ID start from here.
                self.ring = Ring(settings.sse_ring_size, start=await queries.latest_seq(self.runtime.engine))
                ready.set_result(None)
            # A full page: read on at once; else until this process writes (or other replicas' interval).
            return 0.0 if await self.read_once() else settings.sse_poll_seconds

        loop = Loop(
            name="change tailer",
            step=step,
            backoff=Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds),
            wake=self.runtime.changes.wait,
        )
        try:
            await loop.run(stop=self.runtime.stop)
        finally:
            if not ready.done():
                ready.set_exception(TailerStopped())
                # Retrieved here too: nobody may be waiting for it.
                ready.exception()

    async def read_once(self) -> bool:
        """Read, remember and publish the next page of revisions; True when the page was full (read on)."""
        batch = await queries.revisions_after(self.runtime.engine, after=self.cursor, region=None, image_id=None)
        events = [await render(self.runtime, seq=revision.seq, image=revision.image) for revision in batch]
        # Remembered and published together, without awaiting: a client that joins between two events
        # finds the first in the ring and receives the second.
        for event in events:
            self.ring.append(event.seq, event)
            self.watchers.publish(
                seq=event.seq, region=event.image.region, image_id=event.image.image_id, data=event.data
            )
        return len(batch) == queries.FEED_PAGE

    async def _beat(self) -> None:
        every = self.runtime.settings.sse_heartbeat_seconds
        tick = min(BEAT_SECONDS, every)

        async def beat() -> float:
            # Clients that were all sent a change at once are all due at once: spread their keepalives over
            # about half a heartbeat instead of waking ten thousand tasks in one go.
            self.watchers.beat(every=every, limit=max(WAKE_BATCH, math.ceil(2 * len(self.watchers) * tick / every)))
            return tick

        await Loop(name="change heartbeat", step=beat, backoff=Backoff(tick, tick)).run(stop=self.runtime.stop)
        # The process is shutting down: every stream ends; clients resume elsewhere from their Last-Event-ID.
        self.watchers.end_all(End.SHUTDOWN)
