"""Retention: history older than STATUSCACHE_HISTORY_DAYS is dropped, hourly, in small transactions."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from service.errors import DatabaseUnavailable
from service.settings import Settings
from service.store import db, queries
from service.store import evidence as kept_evidence
from service.support.clock import utcnow
from service.support.loops import Backoff, Loop

log = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 3600.0


class Retention:
    def __init__(self, *, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    async def prune(self) -> float:
        """One pruning pass; the seconds until the next."""
        older_than = utcnow() - timedelta(days=self._settings.history_days)
        async with db.translated():
            removed = await queries.prune(self._engine, older_than=older_than)
            # A build's kept evidence goes with its history.
            removed += await kept_evidence.prune(self._engine, older_than=older_than)
        if removed:
            log.info("pruned %d history rows older than %s", removed, older_than.isoformat())
        return PRUNE_INTERVAL_SECONDS

    def loop(self) -> Loop:
        # A failed pass is tried again at the next one, an hour later, as a successful one would be.
        return Loop(
            name="pruner",
            step=self.prune,
            backoff=Backoff(PRUNE_INTERVAL_SECONDS, PRUNE_INTERVAL_SECONDS),
            quiet=(DatabaseUnavailable,),
            detail=f"history older than {self._settings.history_days:g} days, every {PRUNE_INTERVAL_SECONDS:g}s",
        )
