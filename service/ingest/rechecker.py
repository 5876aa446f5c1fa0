"""The rechecks owed (service.domain.rechecks), taken when due: bounded, backing off, settled on success.

A recheck of an image is pcluster's whole lookup of it (observe_live), applied with the recheck's
source and event time; one of an AMI asks EC2 whose image it is, then looks at that image. A recheck
that AWS again does not answer goes back on the list with a longer wait (per recheck, doubling up to
STATUSCACHE_RECHECK_BACKOFF_MAX_SECONDS), and the region pauses for a while as well, so an outage costs a
few probing calls, not one per recheck; when AWS answers again the list drains within seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from service.aws import Aws
from service.domain.models import TAG_IMAGE_ID, Change, Source, tag_value
from service.domain.plans import worth_storing
from service.domain.rechecks import KIND_AMI, Recheck, retry_delay
from service.errors import AwsError, DatabaseUnavailable
from service.freshness import Freshness
from service.ingest.observe import observe_live
from service.metrics import RECHECK_ATTEMPTED, RECHECK_DROPPED, RECHECK_FAILED, RECHECK_SETTLED, Metrics
from service.settings import Settings
from service.store.cache import Cache
from service.store.rechecks import Claimed, Rechecks
from service.support.clock import utcnow
from service.support.loops import Backoff, Loop, Pauses

log = logging.getLogger(__name__)

# The longest the loop sleeps with nothing due: how late it sees a recheck another replica wrote.
IDLE_SECONDS = 5.0
MIN_TICK_SECONDS = 0.05


@dataclass
class RecheckReport:
    attempted: int = 0
    settled: int = 0
    failed: int = 0
    dropped: int = 0


@dataclass(eq=False, kw_only=True)
class Rechecker:
    cache: Cache
    rechecks: Rechecks
    aws: Aws
    settings: Settings
    metrics: Metrics
    freshness: Freshness
    clock: Callable[[], datetime] = utcnow

    def __post_init__(self) -> None:
        self._limit = asyncio.Semaphore(self.settings.refresh_concurrency)
        self._wake = asyncio.Event()
        # Regions whose last look got no answer from AWS: paused, longer each time in a row.
        self._pauses: Pauses[str] = Pauses(
            Backoff(self.settings.recheck_backoff_initial_seconds, self.settings.recheck_backoff_max_seconds)
        )

    def wake(self) -> None:
        """A recheck was owed just now (by this process): the loop reconsiders when the next one is due."""
        self._wake.set()

    async def backlog(self) -> int:
        count = await self.rechecks.backlog()
        self.freshness.rechecks_owed = count
        return count

    def _retry(self, attempts: int) -> float:
        return retry_delay(
            attempts,
            initial=self.settings.recheck_backoff_initial_seconds,
            maximum=self.settings.recheck_backoff_max_seconds,
        )

    async def run_once(self, *, now: datetime | None = None) -> RecheckReport:
        """Every recheck due at `now` (default: now) outside paused regions, a batch at a time."""
        now = now or self.clock()
        report = RecheckReport()
        batch = self.settings.refresh_concurrency * 4
        while True:
            paused = self._pauses.paused(now=now)
            claimed = await self.rechecks.claim(
                now=now, limit=batch, hold_seconds=self.settings.live_lookup_timeout_seconds + 10,
                skip_regions=paused,
            )
            outcomes = await asyncio.gather(*(self._attempt(item) for item in claimed))
            for item, outcome in zip(claimed, outcomes, strict=True):
                report.attempted += 1
                setattr(report, outcome, getattr(report, outcome) + 1)
                self.metrics.rechecks[RECHECK_ATTEMPTED] += 1
                self.metrics.rechecks[outcome] += 1
                if outcome == RECHECK_FAILED:
                    self._pauses.failed(item.recheck.region, now=now)
                elif outcome == RECHECK_SETTLED:
                    self._pauses.succeeded(item.recheck.region)
            if len(claimed) < batch:
                break
        await self.backlog()
        return report

    async def _attempt(self, item: Claimed) -> str:
        recheck = item.recheck
        async with self._limit:
            try:
                if recheck.kind == KIND_AMI:
                    outcome = await self._place_ami(recheck)
                else:
                    outcome = await self._look(recheck)
            except AwsError as exc:
                log.info("recheck of %s %s/%s still failing (attempt %d): %s",
                         recheck.kind, recheck.region, recheck.subject, item.attempts, exc.message)
                await self.rechecks.retry_later(
                    recheck,
                    due_at=self.clock() + timedelta(seconds=self._retry(item.attempts)),
                    error=f"{exc.code or type(exc).__name__}: {exc.message}",
                )
                return RECHECK_FAILED
            if outcome == RECHECK_FAILED:
                await self.rechecks.retry_later(
                    recheck, due_at=self.clock() + timedelta(seconds=self._retry(item.attempts)), error="part unknown"
                )
            elif outcome == RECHECK_SETTLED:
                # Settled, unless news arrived during the look: then look again soon.
                await self.rechecks.retry_later(
                    recheck, due_at=self.clock() + timedelta(seconds=self._retry(1)), error=None
                )
            return outcome

    async def _observe(self, *, region: str, image_id: str) -> Change:
        deadline = asyncio.get_running_loop().time() + self.settings.live_lookup_timeout_seconds
        return await observe_live(self.aws, region=region, image_id=image_id, deadline=deadline)

    async def _look(self, recheck: Recheck) -> str:
        change = await self._observe(region=recheck.region, image_id=recheck.subject)
        change = replace(change, source=recheck.source, happened_at=recheck.happened_at)
        if recheck.source is Source.EVENT:
            stored = await self.cache.read_parts(region=recheck.region, image_id=recheck.subject)
            if not worth_storing(change, stored):
                # An event about a stack that is not an image (a cluster): nothing to keep, nothing owed.
                await self.cache.apply_many([], settled=[(recheck, change.observed_at)])
                return RECHECK_DROPPED
        await self.cache.apply(change)
        return RECHECK_FAILED if change.unknown else RECHECK_SETTLED

    async def _place_ami(self, recheck: Recheck) -> str:
        looked_at = self.clock()
        ami = await self.aws.describe_ami(region=recheck.region, ami_id=recheck.subject)
        image_id = tag_value(ami.tags, TAG_IMAGE_ID) if ami is not None else None
        if image_id is None:
            # Gone, or not a ParallelCluster image's AMI: the event needs nothing more.
            await self.cache.apply_many([], settled=[(recheck, looked_at)])
            return RECHECK_DROPPED
        change = await self._observe(region=recheck.region, image_id=image_id)
        change = replace(change, source=recheck.source, happened_at=recheck.happened_at)
        # The image's own recheck (if a part is unknown) is owed from here on; the AMI's is done.
        await self.cache.apply_many([change], settled=[(recheck, looked_at)])
        return RECHECK_SETTLED

    def loop(self) -> Loop:
        """Look at what is due, then sleep until the next recheck is due (or one is owed: `wake`)."""
        return Loop(
            name="rechecker",
            step=self.step,
            backoff=Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds),
            quiet=(DatabaseUnavailable,),
            wake=self._wake.wait,
            detail=(
                f"rechecks are retried from {self.settings.recheck_backoff_initial_seconds:g}s, "
                f"backing off to {self.settings.recheck_backoff_max_seconds:g}s"
            ),
        )

    async def step(self) -> float:
        """Everything due now (the loop's step); the seconds until the next recheck is due."""
        self._wake.clear()
        await self.run_once()
        return await self._idle_seconds()

    async def _idle_seconds(self) -> float:
        now = self.clock()
        due = await self.rechecks.next_due()
        if due is None:
            return IDLE_SECONDS
        until = (due - now).total_seconds()
        if until <= 0:
            # Due but skipped: its region is paused. Wake when the first pause ends.
            first_end = self._pauses.first_end(now=now)
            until = MIN_TICK_SECONDS if first_end is None else first_end
        return min(IDLE_SECONDS, max(MIN_TICK_SECONDS, until))
