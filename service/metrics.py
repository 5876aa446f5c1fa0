"""The service's own counters: one `Metrics` per process, handed to every component that counts something.

Plain ints, sets and Counters, updated in place (`metrics.events["applied"] += n`): cheap enough for
the API's hot path, and read whole, without locks (one event loop writes them), by /stats
(service.api.health) and by a metrics exposition at scrape time. A counter only ever grows; the few gauges
(the lease's regions, the last reconcile report per region, stream clients) say what is true now. State that
changes answers (AWS reachability, being behind, the database down) is not here: see service.freshness.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

# Outcomes of a live lookup (a describe the cache could not answer).
LOOKUP_OK = "ok"
LOOKUP_NOT_FOUND = "not_found"  # AWS says there is no such image (a 404, remembered for a while)
LOOKUP_THROTTLED = "throttled"  # AWS throttled a call of the lookup
LOOKUP_ERROR = "error"  # AWS, or the database, failed otherwise (or too slowly)
LOOKUP_BUDGET = "budget"  # refused by this process's per-region budget: no AWS call was made
LOOKUP_CALLER_BUDGET = "caller_budget"  # refused by the caller's own share of the budget: no AWS call was made
LOOKUP_COALESCED = "coalesced"  # joined a lookup of the same image already in flight
# The outcomes of lookups that went to AWS (/stats' "live_lookups" counts these).
LOOKUPS_STARTED = (LOOKUP_OK, LOOKUP_NOT_FOUND, LOOKUP_THROTTLED, LOOKUP_ERROR)

# Outcomes of one AWS API call (after botocore's own retries).
CALL_OK = "ok"
CALL_THROTTLED = "throttled"
CALL_NOT_FOUND = "not_found"  # the resource does not exist: often a normal answer
CALL_ERROR = "error"

# How a describe was answered (its X-Cache header): from the cache, live, or from the cache but not the
# confirmed truth of now (a recheck is owed, or the database is down and memory answered).
ANSWER_HIT = "HIT"
ANSWER_MISS = "MISS"
ANSWER_STALE = "STALE"
# Why an answer carries X-Cache-Stale.
STALE_AWS_ERROR = "aws-error"  # a part could not be confirmed at the last look; a recheck is owed
STALE_UNCONFIRMED = "unconfirmed"  # not confirmed against AWS for longer than the bound, or since AWS failed
STALE_DATABASE = "database-unavailable"  # the database is down: the record this process last read

# Outcomes of rechecks (service.ingest.rechecker).
RECHECK_ATTEMPTED = "attempted"
RECHECK_SETTLED = "settled"  # the look settled the recheck
RECHECK_FAILED = "failed"  # AWS still could not answer (all or part): retried after a backoff
RECHECK_DROPPED = "dropped"  # the look found nothing to store (a stack that is not an image, an unplaced AMI gone)


# Outcomes of an HTTP request for the cache (the `cache` label of statuscache_http_requests_total).
CACHE_HIT = "hit"  # a describe answered from the cache
CACHE_MISS = "miss"  # a describe answered by a live lookup
CACHE_STALE = "stale"  # a describe answered from the cache, but not the confirmed truth of now (X-Cache: STALE)
CACHE_NOT_MODIFIED = "304"  # any answer that was 304 Not Modified
CACHE_NONE = "none"  # everything else

# Seconds: from a cached describe (well under a millisecond) to a slow live lookup.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds from EventBridge's event time to the change being committed here: SQS delivery is typically
# well under a second, a backlog or a retried batch takes longer.
EVENT_LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
RECONCILE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Histogram:
    """A Prometheus-style histogram in plain ints: per-bucket counts (not cumulative), the sum and the count.

    `observe` is a bisect and two additions, cheap enough for every request.
    """

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        # counts[i] counts observations <= buckets[i] and > buckets[i - 1]; the last one those above them all.
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def add(self, other: Histogram) -> None:
        """Fold `other` (same buckets) into this one."""
        for index, count in enumerate(other.counts):
            self.counts[index] += count
        self.sum += other.sum

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it), ending with (+Inf, count): the exposition's buckets."""
        total = 0
        out: list[tuple[float, int]] = []
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


K = TypeVar("K", bound=Hashable)


class KeyedHistograms(dict[K, Histogram]):
    """Histograms by label values, made on first use with the same buckets."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        super().__init__()
        self.buckets = buckets

    def __missing__(self, key: K) -> Histogram:
        histogram = self[key] = Histogram(self.buckets)
        return histogram


Histograms = KeyedHistograms[str]


@dataclass(slots=True, eq=False)
class Metrics:
    # Live lookups by outcome (LOOKUP_*).
    lookups: Counter[str] = field(default_factory=Counter)
    # AWS calls made by live lookups (pcluster's calls for one describe): what each cached answer saves.
    lookup_aws_calls: int = 0
    # AWS API calls by ("service.Operation", outcome) (CALL_*).
    aws_calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Queue messages and events by what became of them: received, poison, ignored (not an event we
    # read), duplicates, ignored_resources, ignored_amis (not about an image), applied, refreshed
    # (needed a targeted refresh), rechecks_owed (a look AWS did not answer, left to the rechecker),
    # deleted, delete_retries, delete_failures.
    events: Counter[str] = field(default_factory=Counter)
    # Targeted refreshes run (AWS look-ups of one image an event could not place; coalesced per image).
    targeted_refreshes: int = 0
    # Reconcile rounds over every region, whether or not this replica held a region's lease.
    reconcile_passes: int = 0
    # The last reconcile pass of each region this process ran (a PassReport's fields).
    reconcile_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Status changes reconciliation found that no event had brought, by region: how healthy events are.
    reconcile_corrected: Counter[str] = field(default_factory=Counter)
    # Regions whose reconcile lease this process holds now.
    reconcile_lease: set[str] = field(default_factory=set)
    # With `serve --workers`: the host whose poller lease this worker holds (it does the background work).
    poller_lease: set[str] = field(default_factory=set)
    # Authentication: refusals by reason (no credentials, unknown token, forged session, expired session,
    # session of a revoked token) and session_issued (POST /v3/session).
    auth: Counter[str] = field(default_factory=Counter)
    # Tokens-file reloads (SIGHUP) by outcome: ok, failed (the previous tokens stayed in force).
    token_reloads: Counter[str] = field(default_factory=Counter)
    # Notifications: deliveries by (subscription, outcome: delivered, failed, dead_letter, disabled), and for the
    # subscriptions this process delivers (holds the lease of), each one's lag: seconds since the oldest change
    # not yet handled was observed, 0 when caught up.
    deliveries: Counter[tuple[str, str]] = field(default_factory=Counter)
    notify_lag: dict[str, float] = field(default_factory=dict)
    notify_lease: set[str] = field(default_factory=set)
    # Reconcile passes by (region, "ok" | "error"), their AWS calls by region, and their duration by region.
    reconcile_region_passes: Counter[tuple[str, str]] = field(default_factory=Counter)
    reconcile_aws_calls: Counter[str] = field(default_factory=Counter)
    reconcile_seconds: Histograms = field(default_factory=lambda: Histograms(RECONCILE_BUCKETS))
    # Seconds from an event's time (EventBridge's) to its change being committed here.
    event_lag: Histogram = field(default_factory=lambda: Histogram(EVENT_LAG_BUCKETS))
    # HTTP requests by (route, status code, cache outcome CACHE_*): their latency, and so their count. Kept by
    # the API's outermost middleware, so the describe fast path's answers are in them; one histogram per key
    # makes counting a request one dict lookup.
    http_requests: KeyedHistograms[tuple[str, int, str]] = field(
        default_factory=lambda: KeyedHistograms(LATENCY_BUCKETS)
    )
    # Change-stream clients connected now (a gauge).
    stream_clients: int = 0
    # Describe answers that carried X-Cache-Stale, by reason (STALE_*).
    stale_answers: Counter[str] = field(default_factory=Counter)
    # Rechecks by outcome (RECHECK_*); how many are owed now is in service.freshness.
    rechecks: Counter[str] = field(default_factory=Counter)
    # Database outages seen by requests, the requests answered 503 and those served stale from memory
    # meanwhile (whether one is under way now is in service.freshness).
    database_outages: int = 0
    database_unavailable_answers: int = 0
    database_stale_answers: int = 0
    # History queries answered, by kind: fleet_at (ListImages at=), transitions, transitions_export, builds,
    # builds_summary.
    history_queries: Counter[str] = field(default_factory=Counter)
    # Transition rows streamed by exports (NDJSON, CSV).
    history_rows_exported: int = 0
    # History queries cut off by STATUSCACHE_HISTORY_QUERY_SECONDS (answered 503).
    history_timeouts: int = 0
    # Images whose builds were derived again after their transitions changed.
    builds_derived: int = 0

    def live_lookups(self) -> int:
        """Live lookups that went to AWS, whatever their outcome."""
        return sum(self.lookups[outcome] for outcome in LOOKUPS_STARTED)
