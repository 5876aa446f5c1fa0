"""Which replica does a piece of work that only one may do: reconcile a region, deliver a subscription, capture a
region's evidence. A lease is a PostgreSQL session advisory lock; every lease of a `Leases` is held on one
connection of its own, so a hundred subscriptions take one connection, not a hundred.

The holder keeps the connection open; if it dies, PostgreSQL drops the connection and its locks with it, and the
next replica to ask takes over. If this process's connection breaks, every lease it held is given up and asked
for again. On SQLite there is one process and every lease is always held.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.store import db

log = logging.getLogger(__name__)


class Leases:
    # How long a held lease is trusted before its connection is checked again.
    CHECK_SECONDS = 5.0

    def __init__(self, engine: AsyncEngine, *, namespace: str, held: set[str] | None = None) -> None:
        """`held`: the set that shows which leases this process holds (a metric); kept true here."""
        self._engine = engine
        self._shared = engine.dialect.name == "postgresql"
        self._namespace = namespace
        self._connection: AsyncConnection | None = None
        self._held: set[str] = held if held is not None else set()
        self._checked = 0.0
        # One asker at a time: two parts of this process asking for the same lease at once must not open two
        # sessions, the second of which would find the first one's lock and think another replica holds it.
        self._lock = asyncio.Lock()

    def _key(self, name: str) -> str:
        return f"statuscache/{self._namespace}/{name}"

    async def holds(self, name: str) -> bool:
        """True when this process may act for `name` now (taking the lease if it is free).

        A database outage is DatabaseUnavailable here, as everywhere in the store: the loops asking log it in one line.
        """
        if not self._shared:
            return True
        async with self._lock, db.translated():
            now = time.monotonic()
            if self._connection is not None and now - self._checked > self.CHECK_SECONDS:
                try:
                    await self._connection.execute(text("SELECT 1"))
                    self._checked = now
                except Exception:
                    log.warning("lost the %s lease connection; asking again for every lease", self._namespace)
                    await self._reset()
            if name in self._held:
                return True
            if self._connection is None:
                self._connection = await self._engine.connect()
                self._checked = now
            try:
                taking = text("SELECT pg_try_advisory_lock(hashtext(:key))")
                acquired = bool((await self._connection.execute(taking, {"key": self._key(name)})).scalar_one())
                # Commit the implicit transaction; the session-level lock outlives it.
                await self._connection.commit()
            except Exception:
                await self._reset()
                raise
            if acquired:
                log.info("this replica now holds the %s lease of %s", self._namespace, name)
                self._held.add(name)
            return acquired

    async def release(self, name: str) -> None:
        async with self._lock:
            if name not in self._held or self._connection is None:
                return
            self._held.discard(name)
            try:
                unlock = text("SELECT pg_advisory_unlock(hashtext(:key))")
                await self._connection.execute(unlock, {"key": self._key(name)})
                await self._connection.commit()
            except Exception:
                log.warning("releasing the %s lease of %s failed; closing its connection", self._namespace, name)
                await self._reset()

    async def release_all(self) -> None:
        async with self._lock:
            await self._reset()

    async def _reset(self) -> None:
        self._held.clear()
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            # A pooled connection outlives close(): its session (and the locks) must not go back to the pool.
            await connection.invalidate()
        except Exception:
            log.debug("closing a lease connection failed", exc_info=True)
