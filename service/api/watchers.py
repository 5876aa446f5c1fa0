"""The change-stream clients connected to this process: what each asked for, what it has not been sent yet, and
the writing of it.

`publish` never awaits: a change's bytes (built once, by the tailer) go into the buffer of every client whose
filter matches, and a writer task of that client's own writes its buffer to its socket, so no client waits for
another. A client with more than `backlog` events unsent reads slower than changes arrive: it is dropped, its
buffer emptied, and its stream ends after the last whole event it was written, which is where it resumes from
with Last-Event-ID.

An idle client holds no task of its own, only its Watcher: its request's task waits for it to leave, as any
server's does, and a writer is started when there is something to write, and ends when it is written. Ten
thousand idle streams would otherwise hold ten thousand suspended writers (a task, its frames, a future).

Writers are started WAKE_BATCH at a time, one batch per turn of the event loop: a change (or a round of
heartbeats) for ten thousand clients would otherwise queue ten thousand task steps at once, and a describe
arriving meanwhile would wait behind all of them instead of one batch.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable, Iterator
from enum import Enum

from starlette.types import Message, Send

KEEPALIVE = b": keepalive\n\n"
WAKE_BATCH = 32
# A client's buffer is written in pieces of about this size, so a slow socket holds little more than this.
CHUNK_BYTES = 64 * 1024

FilterKey = tuple[str | None, str | None]


def body(data: bytes, *, more: bool = True) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


class End(Enum):
    """Why a stream ends, and the comment it ends with."""

    SHUTDOWN = b": shutting down\n\n"
    SLOW = b": too far behind; reconnect with Last-Event-ID\n\n"
    DISCONNECTED = b""


class Watcher:
    """One connected client: its filter (region, image id; None matches any), the events it has not been sent, and,
    once its request has handed it over (`Watchers.hand_over`), how to write to it."""

    # Ten thousand of these live at once: no per-instance dict.
    __slots__ = ("after", "ended", "failure", "holder", "key", "last_sent", "pending", "queued", "send", "writer")

    def __init__(self, key: FilterKey, *, after: int, now: float) -> None:
        self.key = key
        # Only changes numbered above this are for this client (it has the others already).
        self.after = after
        self.pending: list[bytes] = []
        self.ended: End | None = None
        self.last_sent = now
        # In line for a writer (once is enough, however many changes come meanwhile).
        self.queued = False
        # Set by hand_over: the response's ASGI send, and the request's task (which waits for the client to leave).
        self.send: Send | None = None
        self.holder: asyncio.Task[object] | None = None
        # The task writing `pending` now, if any; None between writes (an idle client has none).
        self.writer: asyncio.Task[None] | None = None
        # What a writer raised: the holder raises it (the request fails as if it had sent it itself).
        self.failure: Exception | None = None

    def take(self) -> bytes | None:
        """The next piece of the buffer to write (about CHUNK_BYTES at most), or None when it is empty."""
        pending = self.pending
        if not pending:
            return None
        if len(pending) == 1:
            return pending.pop()
        size = count = 0
        for data in pending:
            size += len(data)
            count += 1
            if size >= CHUNK_BYTES:
                break
        chunk = b"".join(pending[:count])
        del pending[:count]
        return chunk


async def write(watcher: Watcher) -> None:
    """A writer: what the client has not been sent, then, once its stream has ended, the closing comment."""
    send = watcher.send
    assert send is not None
    try:
        while watcher.ended is not End.DISCONNECTED:
            chunk = watcher.take()
            if chunk is not None:
                await send(body(chunk))
                continue
            if watcher.ended is not None:
                await send(body(watcher.ended.value, more=False))
            return
    except Exception as exc:
        # Raised where the request is answered, as a failed send always was: uvicorn logs it and closes.
        watcher.failure = exc
        if watcher.holder is not None:
            watcher.holder.cancel()
    finally:
        watcher.writer = None


class Watchers:
    """Every watching client of one process, grouped by filter so a change finds its clients in four lookups."""

    def __init__(self, *, backlog: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._groups: dict[FilterKey, dict[Watcher, None]] = {}
        self._backlog = backlog
        self._clock = clock
        # Streams admitted: watching, or still being sent what they missed.
        self.admitted = 0
        self.dropped_slow = 0
        # Clients with something new for them, waiting for their turn to be woken.
        self._to_wake: deque[Watcher] = deque()
        self._waking = False

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups.values())

    def __iter__(self) -> Iterator[Watcher]:
        for group in list(self._groups.values()):
            yield from list(group)

    def admit(self, limit: int) -> bool:
        """Count one more stream unless `limit` are open already; `leave` uncounts it."""
        if self.admitted >= limit:
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.admitted -= 1

    def watch(self, *, region: str | None, image_id: str | None, after: int) -> Watcher:
        """A new client, receiving every change after `after` into its buffer; its request writes to it until it
        hands it over."""
        key = (region, image_id)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = {}
        else:
            # The group's own key: one tuple for all its clients (every unfiltered client has the same).
            key = next(iter(group)).key
        watcher = Watcher(key, after=after, now=self._clock())
        group[watcher] = None
        return watcher

    def hand_over(self, watcher: Watcher, send: Send) -> None:
        """From now on writers write the client's buffer with `send`: its request (this task) has sent it what it
        missed, and only waits for it to leave."""
        watcher.send = send
        watcher.holder = asyncio.current_task()
        if watcher.pending or watcher.ended is not None:
            self._wake_soon(watcher)

    def release(self, watcher: Watcher) -> None:
        """The client's request is over (it left, or its stream was written to the end): it receives nothing more,
        and a writer still busy with it stops."""
        self.end(watcher, End.DISCONNECTED)
        if watcher.writer is not None:
            watcher.writer.cancel()

    def unwatch(self, watcher: Watcher) -> None:
        group = self._groups.get(watcher.key)
        if group is not None:
            group.pop(watcher, None)
            if not group:
                del self._groups[watcher.key]

    def end(self, watcher: Watcher, why: End) -> None:
        """End a stream: it stops receiving changes; a writer writes what it still holds (unless dropped), then
        the closing comment (none when the client is gone)."""
        if watcher.ended is not None:
            return
        watcher.ended = why
        self.unwatch(watcher)
        if why is End.SLOW:
            watcher.pending.clear()
            self.dropped_slow += 1
        if why is not End.DISCONNECTED:
            self._wake_soon(watcher)

    def _wake_soon(self, watcher: Watcher) -> None:
        # A client being written to finds the new data before its writer ends; one not handed over yet, when its
        # request hands it over.
        if watcher.writer is not None or watcher.send is None or watcher.queued:
            return
        watcher.queued = True
        self._to_wake.append(watcher)
        if not self._waking:
            self._waking = True
            self._next_batch()

    def _next_batch(self) -> None:
        # In a context of its own: whoever's task queued the first client (a request, the tailer), its log context
        # is not the writers'.
        asyncio.get_running_loop().call_soon(self._wake_batch, context=contextvars.Context())

    def _wake_batch(self) -> None:
        to_wake = self._to_wake
        loop = asyncio.get_running_loop()
        for _ in range(min(WAKE_BATCH, len(to_wake))):
            watcher = to_wake.popleft()
            watcher.queued = False
            if watcher.writer is None and watcher.ended is not End.DISCONNECTED:
                watcher.writer = loop.create_task(write(watcher))
        if to_wake:
            self._next_batch()
        else:
            self._waking = False

    def end_all(self, why: End) -> None:
        for watcher in self:
            self.end(watcher, why)

    def publish(self, *, seq: int, region: str, image_id: str, data: bytes) -> int:
        """Hand one change to every client it is for; returns how many. Never waits for any of them."""
        delivered = 0
        too_slow: list[Watcher] = []
        now = self._clock()
        for key in ((None, None), (region, None), (None, image_id), (region, image_id)):
            group = self._groups.get(key)
            if not group:
                continue
            for watcher in group:
                if seq <= watcher.after:
                    continue
                pending = watcher.pending
                pending.append(data)
                if len(pending) > self._backlog:
                    too_slow.append(watcher)
                    continue
                watcher.last_sent = now
                self._wake_soon(watcher)
                delivered += 1
        for watcher in too_slow:
            self.end(watcher, End.SLOW)
        return delivered

    def beat(self, *, every: float, limit: int | None = None) -> int:
        """A keepalive comment to each client that has been sent nothing for `every` seconds, `limit` at most;
        returns how many. Clients left over are due at the next beat, a little late."""
        now = self._clock()
        due = now - every
        beaten = 0
        for group in self._groups.values():
            for watcher in group:
                if watcher.last_sent <= due and not watcher.pending:
                    if limit is not None and beaten >= limit:
                        return beaten
                    watcher.pending.append(KEEPALIVE)
                    watcher.last_sent = now
                    self._wake_soon(watcher)
                    beaten += 1
        return beaten
