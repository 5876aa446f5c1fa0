"""One reader of the transitions for all of a process's deliverers (`Feed`), as the change stream's tailer is for its
clients: the recent transitions are read once and handed to every subscription from memory, so a hundred
subscriptions cost one query per change, not a hundred."""

from __future__ import annotations

import asyncio
import bisect
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from service.store import subscriptions as store
from service.store.subscriptions import Pending

# Transitions kept in memory: a subscription further behind than this reads from the database.
SIZE = 10_000


class Feed:
    def __init__(self, engine: AsyncEngine, *, size: int = SIZE) -> None:
        self._engine = engine
        self._size = size
        self._rows: list[Pending] = []
        self._seqs: list[int] = []
        # Every transition numbered in (floor, top] is in _rows; None until the first read.
        self._floor: int | None = None
        self._top = 0
        self._lock = asyncio.Lock()
        self._read_started = 0.0

    async def after(self, cursor: int, *, limit: int = store.BATCH) -> list[Pending]:
        """The transitions after `cursor`, oldest first, at most `limit`: as of a read that began after this call
        did (so nothing committed before the call is missed)."""
        asked = time.monotonic()
        async with self._lock:
            if self._floor is None:
                self._floor = self._top = cursor
            if cursor < self._floor:
                # Behind what memory holds (a replay, a subscription far behind): from the database, not kept.
                return await store.pending(self._engine, after=cursor, limit=limit)
            held = self._slice(cursor, limit)
            if len(held) == limit or self._read_started >= asked:
                # Enough in memory, or a read begun after this call was made has just been taken in.
                return held
            self._read_started = time.monotonic()
            fresh = await store.pending(self._engine, after=self._top, limit=max(limit, store.BATCH))
            self._take(fresh)
            return self._slice(cursor, limit)

    def _slice(self, cursor: int, limit: int) -> list[Pending]:
        start = bisect.bisect_right(self._seqs, cursor)
        return self._rows[start : start + limit]

    def _take(self, fresh: list[Pending]) -> None:
        for item in fresh:
            self._rows.append(item)
            self._seqs.append(item.notice.seq)
            self._top = item.notice.seq
        excess = len(self._rows) - self._size
        if excess > 0:
            self._floor = self._seqs[excess - 1]
            del self._rows[:excess], self._seqs[:excess]
