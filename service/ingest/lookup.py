"""Describe one image: the cache, else one live lookup (coalesced, budgeted), written through, then served.

The live-lookup budget is two token buckets: the region's, which protects AWS, and each caller's share of
it, so one caller's flood of unknown ids cannot use up everyone's first lookups. When the database
cannot answer, a record this process read within the staleness bound is served, marked stale, rather
than a 503: it is what the cache said moments ago, and the client is told so.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.aws import Aws, calls_made
from service.domain.models import CachedImage
from service.domain.rows import ApplyResult
from service.errors import AwsThrottled, DatabaseUnavailable, NotFound, TooManyRequests
from service.ingest.observe import observe_live
from service.metrics import (
    LOOKUP_BUDGET,
    LOOKUP_CALLER_BUDGET,
    LOOKUP_COALESCED,
    LOOKUP_ERROR,
    LOOKUP_NOT_FOUND,
    LOOKUP_OK,
    LOOKUP_THROTTLED,
    STALE_DATABASE,
    Metrics,
)
from service.settings import Settings
from service.store.cache import Cache
from service.store.outage import DatabaseOutage
from service.support.bounded import BoundedDict
from service.support.singleflight import SingleFlight

log = logging.getLogger(__name__)

READ_CACHE_MAX_ENTRIES = 50_000
NEGATIVE_MAX_ENTRIES = 100_000
CALLER_BUDGETS_MAX_ENTRIES = 10_000
BUDGET_MESSAGE = "Too many live lookups for images not in the cache; retry later."


def not_found_message(image_id: str) -> str:
    return f"No image or stack associated with ParallelCluster image id: {image_id}."


@dataclass(frozen=True)
class Answer:
    image: CachedImage
    hit: bool
    # Set when the answer is known not to be the cache's answer of now (STALE_DATABASE: the database is down
    # and this is the record as this process last read it).
    stale: str | None = None


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

    def give_back(self) -> None:
        """Return a token taken for work that was then refused elsewhere."""
        self._tokens = min(self._capacity, self._tokens + 1.0)


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
        outage: DatabaseOutage | None = None,
    ) -> None:
        self._cache = cache
        self._outage = outage
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
        # Each caller's share, by (region, caller); past its bound the memory starts over (every share full again).
        self._caller_budgets: BoundedDict[tuple[str, str], TokenBucket] = BoundedDict(CALLER_BUDGETS_MAX_ENTRIES)
        # A small read-through memory of recent records: dropped on every local write (so this
        # process never serves older than what it committed), and kept at most `read_cache_seconds`
        # (the extra staleness a write by another replica can see).
        self._recent: BoundedDict[tuple[str, str], tuple[float, CachedImage]] = BoundedDict(READ_CACHE_MAX_ENTRIES)
        self._generation = 0
        # Past that bound a record is still the stored one if the database has not changed since it was read
        # (Cache.data_version, where the database can tell: SQLite): the version last seen, when it was last
        # looked at, and the look since which it has not changed (records read before it may be stale).
        self._data_version: int | None = None
        self._version_checked_at = -math.inf
        self._unchanged_since = math.inf

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
        if entry is None:
            return None
        read_at, cached = entry
        if now - read_at < self._settings.read_cache_seconds or self.unchanged_since(read_at, now):
            return cached
        return None

    def unchanged_since(self, read_at: float, now: float) -> bool:
        """Whether nothing stored has changed since `read_at`, as far as the database can say now (False where it
        cannot: PostgreSQL). Clock times: time.monotonic's, as this lookup's own."""
        return read_at >= self._vouched_since(now)

    def _vouched_since(self, now: float) -> float:
        """The moment since which the database has not changed, as a look at most `read_cache_seconds` old
        says (looking again now when the last one is older): a record read since then is still the stored one.
        Infinity (no record vouched for) where the database cannot tell."""
        if now - self._version_checked_at >= self._settings.read_cache_seconds:
            version = self._cache.data_version()
            if version is None:
                self._data_version, self._version_checked_at, self._unchanged_since = None, -math.inf, math.inf
                return math.inf
            if version != self._data_version:
                # Changed since the last look (or never looked): only what is read from `now` on is vouched for.
                # Every caller read `now` in the same synchronous stretch as this look, so no read began between
                # them: a record read at `now` or later was read after the look and holds what it saw.
                self._data_version, self._unchanged_since = version, now
            self._version_checked_at = now
        return self._unchanged_since

    def _remember(self, key: tuple[str, str], read_at: float, cached: CachedImage | None) -> None:
        if self._settings.read_cache_seconds <= 0 or cached is None or not cached.exists:
            return
        self._recent[key] = (read_at, cached)

    def recent(self, key: tuple[str, str]) -> CachedImage | None:
        """The existing record of (region, image id) without awaiting: from memory if read within
        `read_cache_seconds` (or unchanged since), else read now where the database allows it without a round trip
        (SQLite); None when neither answers."""
        now = self._clock()
        remembered = self._remembered(key, now)
        if remembered is not None:
            return remembered
        region, image_id = key
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

    def _held(self, key: tuple[str, str]) -> CachedImage | None:
        """The record this process last read for `key`, if read within the staleness bound."""
        entry = self._recent.get(key)
        if entry is not None and self._clock() - entry[0] < self._settings.stale_bound_seconds:
            return entry[1]
        return None

    async def get(self, *, region: str, image_id: str, caller: str = "") -> Answer:
        """The cached record (hit) or a fresh live one (miss), charged to `caller`'s share of the budget.

        Raises NotFound, TooManyRequests, AwsError, DatabaseUnavailable.
        """
        key = (region, image_id)
        try:
            cached = await self._read(region=region, image_id=image_id)
        except DatabaseUnavailable as exc:
            held = self._held(key)
            if held is None:
                raise
            if self._outage is not None:
                self._outage.failed(exc, served_stale=True)
            return Answer(held, hit=True, stale=STALE_DATABASE)
        if cached is not None and cached.exists:
            return Answer(cached, hit=True)
        if cached is not None and self._recently_confirmed_gone(cached):
            raise NotFound(not_found_message(image_id))
        expiry = self._negative.get(key)
        if expiry is not None:
            if expiry > self._clock():
                raise NotFound(not_found_message(image_id))
            del self._negative[key]
        # Concurrent misses for one image share one lookup, charged to the caller that started it; a client
        # that gives up does not cancel it.
        if key in self._flights:
            self._metrics.lookups[LOOKUP_COALESCED] += 1
        else:
            self._charge(region=region, caller=caller)
        return Answer(await self._flights.run(key, lambda: self._live(region=region, image_id=image_id)), hit=False)

    def charge(self, *, region: str, caller: str) -> None:
        """Charge other live AWS reads on a caller's behalf (ParallelCluster's image log operations) to the same
        budgets, or raise TooManyRequests."""
        self._charge(region=region, caller=caller)

    def _charge(self, *, region: str, caller: str) -> None:
        """Take one live lookup from the caller's share and the region's budget, or raise TooManyRequests."""
        share = self._caller_budgets.get((region, caller))
        if share is None:
            share = TokenBucket(rate=self._settings.live_lookups_per_caller_per_second, clock=self._clock)
            self._caller_budgets[(region, caller)] = share
        wait = share.take()
        if wait > 0:
            self._metrics.lookups[LOOKUP_CALLER_BUDGET] += 1
            raise TooManyRequests(BUDGET_MESSAGE, retry_after=wait)
        wait = self._budgets[region].take()
        if wait > 0:
            share.give_back()
            self._metrics.lookups[LOOKUP_BUDGET] += 1
            raise TooManyRequests(BUDGET_MESSAGE, retry_after=wait)

    def _recently_confirmed_gone(self, cached: CachedImage) -> bool:
        age = (time.time() - cached.confirmed_at.timestamp())
        return age < self._settings.negative_ttl_seconds

    async def _live(self, *, region: str, image_id: str) -> CachedImage:
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
        # A part slower than the bound is left unknown (answered as pcluster would without it); EC2 or
        # CloudFormation slower than it is an AwsError (503).
        deadline = asyncio.get_running_loop().time() + self._settings.live_lookup_timeout_seconds
        change = await observe_live(self._aws, region=region, image_id=image_id, deadline=deadline)
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
