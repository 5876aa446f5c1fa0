"""The looks at AWS still owed (service.domain.refreshes), taken when due: bounded, backing off, settled on success.

A look owed about an image is pcluster's whole lookup of it (observe_live), applied with the need's
source and event time; one about an AMI asks EC2 whose image it is, then looks at that image. A look
that AWS again does not answer goes back on the list with a longer wait (per need, doubling up to
STATUSCACHE_HEAL_BACKOFF_MAX_SECONDS), and the region pauses for a while as well, so an outage costs a
few probing calls, not one per need; when AWS answers again the list drains within seconds.
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
from service.domain.refreshes import KIND_AMI, Need, retry_delay
from service.errors import AwsError, DatabaseUnavailable
from service.freshness import Freshness
from service.ingest.observe import observe_live
from service.metrics import HEAL_ATTEMPTED, HEAL_DROPPED, HEAL_FAILED, HEAL_HEALED, Metrics
from service.settings import Settings
from service.store.cache import Cache
from service.store.refresh_queue import Claimed, RefreshQueue
from service.support.clock import utcnow
from service.support.loops import Backoff, Loop, Pauses

log = logging.getLogger(__name__)

# The longest the loop sleeps with nothing due: how late it sees a need another replica wrote.
IDLE_SECONDS = 5.0
MIN_TICK_SECONDS = 0.05


@dataclass
class HealReport:
    attempted: int = 0
    healed: int = 0
    failed: int = 0
    dropped: int = 0


@dataclass(eq=False, kw_only=True)
class Healer:
    cache: Cache
    queue: RefreshQueue
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
            Backoff(self.settings.heal_backoff_initial_seconds, self.settings.heal_backoff_max_seconds)
        )

    def wake(self) -> None:
        """A look was owed just now (by this process): the loop reconsiders when the next one is due."""
        self._wake.set()

    async def backlog(self) -> int:
        count = await self.queue.backlog()
        self.freshness.heal_backlog = count
        return count

    def _retry(self, attempts: int) -> float:
        return retry_delay(
            attempts,
            initial=self.settings.heal_backoff_initial_seconds,
            maximum=self.settings.heal_backoff_max_seconds,
        )

    async def run_once(self, *, now: datetime | None = None) -> HealReport:
        """Look at every need due at `now` (default: now) outside paused regions, a batch at a time."""
        now = now or self.clock()
        report = HealReport()
        batch = self.settings.refresh_concurrency * 4
        while True:
            paused = self._pauses.paused(now=now)
            claimed = await self.queue.claim(
                now=now, limit=batch, hold_seconds=self.settings.live_lookup_timeout_seconds + 10,
                skip_regions=paused,
            )
            outcomes = await asyncio.gather(*(self._attempt(item) for item in claimed))
            for item, outcome in zip(claimed, outcomes, strict=True):
                report.attempted += 1
                setattr(report, outcome, getattr(report, outcome) + 1)
                self.metrics.heals[HEAL_ATTEMPTED] += 1
                self.metrics.heals[outcome] += 1
                if outcome == HEAL_FAILED:
                    self._pauses.failed(item.need.region, now=now)
                elif outcome == HEAL_HEALED:
                    self._pauses.succeeded(item.need.region)
            if len(claimed) < batch:
                break
        await self.backlog()
        return report

    async def _attempt(self, item: Claimed) -> str:
        need = item.need
        async with self._limit:
            try:
                if need.kind == KIND_AMI:
                    outcome = await self._place_ami(need)
                else:
                    outcome = await self._look(need)
            except AwsError as exc:
                log.info("look at %s %s/%s still failing (attempt %d): %s",
                         need.kind, need.region, need.subject, item.attempts, exc.message)
                await self.queue.retry_later(
                    need,
                    due_at=self.clock() + timedelta(seconds=self._retry(item.attempts)),
                    error=f"{exc.code or type(exc).__name__}: {exc.message}",
                )
                return HEAL_FAILED
            if outcome == HEAL_FAILED:
                await self.queue.retry_later(
                    need, due_at=self.clock() + timedelta(seconds=self._retry(item.attempts)), error="part unknown"
                )
            elif outcome == HEAL_HEALED:
                # Settled, unless news arrived during the look: then look again soon.
                await self.queue.retry_later(
                    need, due_at=self.clock() + timedelta(seconds=self._retry(1)), error=None
                )
            return outcome

    async def _observe(self, *, region: str, image_id: str) -> Change:
        deadline = asyncio.get_running_loop().time() + self.settings.live_lookup_timeout_seconds
        return await observe_live(self.aws, region=region, image_id=image_id, deadline=deadline)

    async def _look(self, need: Need) -> str:
        change = await self._observe(region=need.region, image_id=need.subject)
        change = replace(change, source=need.source, happened_at=need.happened_at)
        if need.source is Source.EVENT:
            stored = await self.cache.read_parts(region=need.region, image_id=need.subject)
            if not worth_storing(change, stored):
                # An event about a stack that is not an image (a cluster): nothing to keep, nothing owed.
                await self.cache.apply_many([], settled=[(need, change.observed_at)])
                return HEAL_DROPPED
        await self.cache.apply(change)
        return HEAL_FAILED if change.unknown else HEAL_HEALED

    async def _place_ami(self, need: Need) -> str:
        looked_at = self.clock()
        ami = await self.aws.describe_ami(region=need.region, ami_id=need.subject)
        image_id = tag_value(ami.tags, TAG_IMAGE_ID) if ami is not None else None
        if image_id is None:
            # Gone, or not a ParallelCluster image's AMI: the event needs nothing more.
            await self.cache.apply_many([], settled=[(need, looked_at)])
            return HEAL_DROPPED
        change = await self._observe(region=need.region, image_id=image_id)
        change = replace(change, source=need.source, happened_at=need.happened_at)
        # The image's own look (if a part is unknown) is owed from here on; the AMI's is done.
        await self.cache.apply_many([change], settled=[(need, looked_at)])
        return HEAL_HEALED

    def loop(self) -> Loop:
        """Look at what is due, then sleep until the next need is due (or one is owed: `wake`)."""
        return Loop(
            name="healer",
            step=self.step,
            backoff=Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds),
            quiet=(DatabaseUnavailable,),
            wake=self._wake.wait,
            detail=(
                f"looks at AWS still owed are retried from {self.settings.heal_backoff_initial_seconds:g}s, "
                f"backing off to {self.settings.heal_backoff_max_seconds:g}s"
            ),
        )

    async def step(self) -> float:
        """Everything due now (the loop's step); the seconds until the next look is due."""
        self._wake.clear()
        await self.run_once()
        return await self._idle_seconds()

    async def _idle_seconds(self) -> float:
        now = self.clock()
        due = await self.queue.next_due()
        if due is None:
            return IDLE_SECONDS
        until = (due - now).total_seconds()
        if until <= 0:
            # Due but skipped: its region is paused. Wake when the first pause ends.
            first_end = self._pauses.first_end(now=now)
            until = MIN_TICK_SECONDS if first_end is None else first_end
        return min(IDLE_SECONDS, max(MIN_TICK_SECONDS, until))
