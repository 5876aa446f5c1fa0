"""Database outages as an operator reads them: one line when one starts, a summary while it lasts, one when it ends.

Requests find out that the database is down; they report it here (`failed`) and answer 503 (or a
record still in memory, marked stale) without logging anything themselves, so an outage under load
is three kinds of log line, not a traceback per request. The end is found by a probe (`SELECT 1`
every `probe_seconds`), not by waiting for the next request to succeed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.errors import DatabaseUnavailable
from service.freshness import Freshness
from service.metrics import Metrics
from service.store import db

log = logging.getLogger(__name__)

PROBE_SECONDS = 1.0
SUMMARY_SECONDS = 30.0


class DatabaseOutage:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        metrics: Metrics,
        freshness: Freshness,
        probe_seconds: float = PROBE_SECONDS,
        summary_seconds: float = SUMMARY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._freshness = freshness
        self._probe_seconds = probe_seconds
        self._summary_seconds = summary_seconds
        self._clock = clock
        self._since: float | None = None
        self._refused = 0
        self._stale = 0
        self._probe: asyncio.Task[None] | None = None
        self._odd_failure_logged = False

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, error: DatabaseUnavailable, *, served_stale: bool = False) -> None:
        """A request found the database unavailable and answered 503 (or, `served_stale`, from memory)."""
        if served_stale:
            self._stale += 1
            self._metrics.database_stale_answers += 1
        else:
            self._refused += 1
            self._metrics.database_unavailable_answers += 1
        self.noticed(error)

    def noticed(self, error: DatabaseUnavailable) -> None:
        """The database did not answer (a request, a readiness check): an outage starts unless one is under way."""
        if self._since is not None:
            return
        self._since = self._clock()
        self._metrics.database_outages += 1
        self._freshness.database_down = True
        log.error("database unavailable: %s; answering 503 (or what is in memory, marked stale) until it is back",
                  error.message)
        try:
            self._probe = asyncio.get_running_loop().create_task(self._watch(), name="database-probe")
        except RuntimeError:  # no loop (a synchronous caller): the next request's report starts the probe
            self._since = None
            self._freshness.database_down = False

    async def _watch(self) -> None:
        last_summary = self._clock()
        while True:
            await asyncio.sleep(self._probe_seconds)
            if await self._answers():
                break
            now = self._clock()
            if now - last_summary >= self._summary_seconds:
                last_summary = now
                log.warning(
                    "database still unavailable after %.0fs: %d requests answered 503, %d served stale from memory",
                    now - (self._since or now), self._refused, self._stale,
                )
        lasted = self._clock() - (self._since or self._clock())
        log.warning(
            "database available again after %.0fs: %d requests were answered 503, %d served stale from memory",
            lasted, self._refused, self._stale,
        )
        self._since = None
        self._refused = self._stale = 0
        self._freshness.database_down = False

    async def _answers(self) -> bool:
        try:
            async with self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:
            if db.unavailable(exc) is None and not self._odd_failure_logged:
                # A fault that is not an outage (a bug, a permission): say so once, keep probing.
                self._odd_failure_logged = True
                log.exception("database probe failed")
            return False
        return True

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
