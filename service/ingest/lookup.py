"""Describe one image: the cache, else one live lookup (coalesced, budgeted), written through, then served."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.aws import Aws, calls_made
from service.domain.models import CachedImage
from service.domain.rows import ApplyResult
from service.errors import AwsError, AwsThrottled, NotFound, TooManyRequests
from service.ingest.observe import observe_live
from service.metrics import (
    LOOKUP_BUDGET,
    LOOKUP_COALESCED,
    LOOKUP_ERROR,
    LOOKUP_NOT_FOUND,
    LOOKUP_OK,
    LOOKUP_THROTTLED,
    Metrics,
)
from service.settings import Settings
from service.store.cache import Cache
from service.support.bounded import BoundedDict
from service.support.singleflight import SingleFlight

log = logging.getLogger(__name__)

READ_CACHE_MAX_ENTRIES = 50_000
NEGATIVE_MAX_ENTRIES = 100_000


def not_found_message(image_id: str) -> str:
    return f"No image or stack associated with ParallelCluster image id: {image_id}."


@dataclass(frozen=True)
class Answer:
    image: CachedImage
    hit: bool


class TokenBucket:
    """Live lookups allowed per second, with a burst of one second's worth."""

    def __init__(self, *, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._capacity = max(rate, 1.0)
        self._tokens = self._capacity
        self._clock = clock
        self._last = clock()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


class Lookup:
    """Cache first; on a miss one live lookup per key at a time, remembered negatively for a while."""

    def __init__(
        self,
        *,
        cache: Cache,
        aws: Aws,
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache = cache
        self._aws = aws
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._flights: SingleFlight[tuple[str, str], CachedImage] = SingleFlight()
        # Expiry (clock time) of each remembered 404.
        self._negative: BoundedDict[tuple[str, str], float] = BoundedDict(NEGATIVE_MAX_ENTRIES)
        self._budgets = {
            region: TokenBucket(rate=settings.live_lookups_per_second, clock=clock) for region in settings.regions
        }
        # A small read-through memory of recent records: dropped on every local write (so this
        # process never serves older than what it committed), and kept at most `read_cache_seconds`
        # (the extra staleness a write by another replica can see).
        self._recent: BoundedDict[tuple[str, str], tuple[float, CachedImage]] = BoundedDict(READ_CACHE_MAX_ENTRIES)
        self._generation = 0

    def forget(self, results: Sequence[ApplyResult]) -> None:
        """Called after every committed write batch (Cache listener)."""
        if not results:
            return
        self._generation += 1
        for result in results:
            key = (result.region, result.image_id)
            self._recent.pop(key, None)
            if result.exists:
                self._negative.pop(key, None)

    @property
    def generation(self) -> int:
        """Grows with every local write batch: what memories of query results check."""
        return self._generation

    def _remembered(self, key: tuple[str, str], now: float) -> CachedImage | None:
        entry = self._recent.get(key)
        if entry is not None and now - entry[0] < self._settings.read_cache_seconds:
            return entry[1]
        return None

    def _remember(self, key: tuple[str, str], read_at: float, cached: CachedImage | None) -> None:
        if self._settings.read_cache_seconds <= 0 or cached is None or not cached.exists:
            return
        self._recent[key] = (read_at, cached)

    def recent(self, *, region: str, image_id: str) -> CachedImage | None:
        """An existing record without awaiting: from memory if read within `read_cache_seconds`, else read
        now where the database allows it without a round trip (SQLite); None when neither answers."""
        key = (region, image_id)
        now = self._clock()
        remembered = self._remembered(key, now)
        if remembered is not None:
            return remembered
        answered, cached = self._cache.read_now(region=region, image_id=image_id)
        if not answered or cached is None or not cached.exists:
            return None
        # Synchronous: no write can have landed between this read and remembering it.
        self._remember(key, now, cached)
        return cached

    async def _read(self, *, region: str, image_id: str) -> CachedImage | None:
        key = (region, image_id)
        started = self._clock()
        remembered = self._remembered(key, started)
        if remembered is not None:
            return remembered
        generation = self._generation
        cached = await self._cache.read(region=region, image_id=image_id)
        # Only remember it if no write landed while we read: otherwise it may already be stale.
        if generation == self._generation:
            self._remember(key, started, cached)
        return cached

    async def get(self, *, region: str, image_id: str) -> Answer:
        """The cached record (hit) or a fresh live one (miss). Raises NotFound, TooManyRequests, AwsError."""
        cached = await self._read(region=region, image_id=image_id)
        if cached is not None and cached.exists:
            return Answer(cached, hit=True)
        key = (region, image_id)
        if cached is not None and self._recently_confirmed_gone(cached):
            raise NotFound(not_found_message(image_id))
        expiry = self._negative.get(key)
        if expiry is not None:
            if expiry > self._clock():
                raise NotFound(not_found_message(image_id))
            del self._negative[key]
        # Concurrent misses for one image share one lookup; a client that gives up does not cancel it.
        if key in self._flights:
            self._metrics.lookups[LOOKUP_COALESCED] += 1
        return Answer(await self._flights.run(key, lambda: self._live(region=region, image_id=image_id)), hit=False)

    def _recently_confirmed_gone(self, cached: CachedImage) -> bool:
        age = (time.time() - cached.confirmed_at.timestamp())
        return age < self._settings.negative_ttl_seconds

    async def _live(self, *, region: str, image_id: str) -> CachedImage:
        wait = self._budgets[region].take()
        if wait > 0:
            self._metrics.lookups[LOOKUP_BUDGET] += 1
            raise TooManyRequests(
                "Too many live lookups for images not in the cache; retry later.", retry_after=wait
            )
        try:
            with calls_made() as tally:
                try:
                    cached = await self._look_up(region=region, image_id=image_id)
                finally:
                    # What a cached answer saves: the calls pcluster's describe makes, these.
                    self._metrics.lookup_aws_calls += tally[0]
        except NotFound:
            self._metrics.lookups[LOOKUP_NOT_FOUND] += 1
            raise
        except AwsThrottled:
            self._metrics.lookups[LOOKUP_THROTTLED] += 1
            raise
        except Exception:
            self._metrics.lookups[LOOKUP_ERROR] += 1
            raise
        self._metrics.lookups[LOOKUP_OK] += 1
        return cached

    async def _look_up(self, *, region: str, image_id: str) -> CachedImage:
        """pcluster's calls, written through the cache, then the stored record. Raises NotFound, AwsError."""
        try:
            change = await asyncio.wait_for(
                observe_live(self._aws, region=region, image_id=image_id),
                timeout=self._settings.live_lookup_timeout_seconds,
            )
        except TimeoutError as exc:
            raise AwsError("AWS did not answer in time", code="Timeout") from exc
        result = await self._cache.apply(change)
        if not result.exists:
            self._remember_missing(region=region, image_id=image_id)
            raise NotFound(not_found_message(image_id))
        cached = await self._cache.read(region=region, image_id=image_id)
        if cached is None or not cached.exists:
            # Something newer (an event, a reconcile) said it is gone between our write and read.
            raise NotFound(not_found_message(image_id))
        return cached

    def _remember_missing(self, *, region: str, image_id: str) -> None:
        self._negative[(region, image_id)] = self._clock() + self._settings.negative_ttl_seconds
