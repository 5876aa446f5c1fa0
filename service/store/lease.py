"""Which replica reconciles a region: a PostgreSQL session advisory lock, held on its own connection.

The holder keeps the connection open; if it dies, PostgreSQL drops the connection and the lock with
it, and the next replica to ask (each asks once per resync interval) takes over. On SQLite there is
one process and the lease is always held.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.metrics import Metrics

log = logging.getLogger(__name__)


class RegionLease:
    def __init__(self, engine: AsyncEngine, *, metrics: Metrics) -> None:
        self._engine = engine
        self._shared = engine.dialect.name == "postgresql"
        self._held: dict[str, AsyncConnection] = {}
        self._metrics = metrics

    async def holds(self, region: str) -> bool:
        """True when this process may reconcile `region` now (taking the lease if it is free)."""
        if not self._shared:
            return True
        connection = self._held.get(region)
        if connection is not None:
            try:
                await connection.execute(text("SELECT 1"))
                return True
            except Exception:
                log.warning("lost the reconcile lease connection for %s; asking again", region)
                await self._drop(region)
        connection = await self._engine.connect()
        try:
            acquired = bool(
                (
                    await connection.execute(
                        text("SELECT pg_try_advisory_lock(hashtext(:key))"), {"key": f"statuscache/reconcile/{region}"}
                    )
                ).scalar_one()
            )
            # Commit the implicit transaction; the session-level lock outlives it.
            await connection.commit()
        except Exception:
            await connection.close()
            raise
        if not acquired:
            await connection.close()
            return False
        log.info("this replica now reconciles %s", region)
        self._held[region] = connection
        self._metrics.reconcile_lease.add(region)
        return True

    async def _drop(self, region: str) -> None:
        self._metrics.reconcile_lease.discard(region)
        connection = self._held.pop(region, None)
        if connection is not None:
            try:
                await connection.close()
            except Exception:
                log.debug("closing a broken lease connection failed", exc_info=True)

    async def release_all(self) -> None:
        for region in list(self._held):
            connection = self._held[region]
            try:
                await connection.execute(
                    text("SELECT pg_advisory_unlock(hashtext(:key))"), {"key": f"statuscache/reconcile/{region}"}
                )
                await connection.commit()
            except Exception:
                log.warning("releasing the reconcile lease for %s failed; closing its connection", region)
            await self._drop(region)


class NamedLeases:
    """Which replica delivers a subscription (service.notify): the same PostgreSQL session advisory locks as the
    reconcile lease, every one of a process held on one connection, so a hundred subscriptions take one
    connection, not a hundred. If the connection breaks, every lease it held is given up and asked for again.
    On SQLite there is one process and every lease is held."""

    # How long a held lease is trusted before its connection is checked again.
    CHECK_SECONDS = 5.0

    def __init__(self, engine: AsyncEngine, *, namespace: str) -> None:
        self._engine = engine
        self._shared = engine.dialect.name == "postgresql"
        self._namespace = namespace
        self._connection: AsyncConnection | None = None
        self._held: set[str] = set()
        self._checked = 0.0
        self._lock = asyncio.Lock()

    def _key(self, name: str) -> str:
        return f"statuscache/{self._namespace}/{name}"

    async def holds(self, name: str) -> bool:
        """True when this process may act for `name` now (taking the lease if it is free)."""
        if not self._shared:
            return True
        async with self._lock:
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
                acquired = bool(
                    (
                        await self._connection.execute(
                            text("SELECT pg_try_advisory_lock(hashtext(:key))"), {"key": self._key(name)}
                        )
                    ).scalar_one()
                )
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
