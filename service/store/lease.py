"""Which replica reconciles a region: a PostgreSQL session advisory lock, held on its own connection.

The holder keeps the connection open; if it dies, PostgreSQL drops the connection and the lock with
it, and the next replica to ask (each asks once per resync interval) takes over. On SQLite there is
one process and the lease is always held.
"""

from __future__ import annotations

import logging

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
