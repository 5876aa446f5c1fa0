"""The change-stream clients connected to this process: what each asked for, and what it has not been sent yet.

`publish` never awaits: a change's bytes (built once, by the tailer) go into the buffer of every client whose
filter matches, and each client's own task writes its buffer to its socket, so no client waits for another.
A client with more than `backlog` events unsent reads slower than changes arrive: it is dropped, its buffer
emptied, and its stream ends after the last whole event it was written, which is where it resumes from with
Last-Event-ID.

Clients are woken WAKE_BATCH at a time, one batch per turn of the event loop: a change (or a round of
heartbeats) for ten thousand clients would otherwise queue ten thousand task steps at once, and a describe
arriving meanwhile would wait behind all of them instead of one batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from enum import Enum

KEEPALIVE = b": keepalive\n\n"
WAKE_BATCH = 32
# A client's buffer is written in pieces of about this size, so a slow socket holds little more than this.
CHUNK_BYTES = 64 * 1024

FilterKey = tuple[str | None, str | None]


class End(Enum):
    """Why a stream ends, and the comment it ends with."""

    SHUTDOWN = b": shutting down\n\n"
    SLOW = b": too far behind; reconnect with Last-Event-ID\n\n"
    DISCONNECTED = b""


class Watcher:
    """One connected client: its filter (region, image id; None matches any), and the events it has not been sent."""

    # Ten thousand of these live at once: no per-instance dict.
    __slots__ = ("after", "ended", "key", "last_sent", "pending", "queued", "waiter")

    def __init__(self, key: FilterKey, *, after: int, now: float) -> None:
        self.key = key
        # Only changes numbered above this are for this client (it has the others already).
        self.after = after
        self.pending: list[bytes] = []
        # What the client's task awaits when it has nothing to write; set by `wake`.
        self.waiter: asyncio.Future[None] | None = None
        self.ended: End | None = None
        self.last_sent = now
        # In line to be woken (once is enough, however many changes come meanwhile).
        self.queued = False

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

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


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
        watcher = Watcher((region, image_id), after=after, now=self._clock())
        self._groups.setdefault(watcher.key, {})[watcher] = None
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        group = self._groups.get(watcher.key)
        if group is not None:
            group.pop(watcher, None)
            if not group:
                del self._groups[watcher.key]

    def end(self, watcher: Watcher, why: End) -> None:
        """End a stream: it stops receiving changes; its task writes what it still holds (unless dropped), then
        the closing comment."""
        if watcher.ended is not None:
            return
        watcher.ended = why
        self.unwatch(watcher)
        if why is End.SLOW:
            watcher.pending.clear()
            self.dropped_slow += 1
        self._wake_soon(watcher)

    def _wake_soon(self, watcher: Watcher) -> None:
        # A client whose task is busy writing (no waiter) finds the new data when it looks again.
        if watcher.waiter is None or watcher.queued:
            return
        watcher.queued = True
        self._to_wake.append(watcher)
        if not self._waking:
            self._waking = True
            asyncio.get_running_loop().call_soon(self._wake_batch)

    def _wake_batch(self) -> None:
        to_wake = self._to_wake
        for _ in range(min(WAKE_BATCH, len(to_wake))):
            watcher = to_wake.popleft()
            watcher.queued = False
            watcher.wake()
        if to_wake:
            asyncio.get_running_loop().call_soon(self._wake_batch)
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
