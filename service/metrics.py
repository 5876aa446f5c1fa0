"""The service's own counters: one `Metrics` per process, handed to every component that counts something.

Plain ints, sets and Counters, updated in place (`metrics.events["applied"] += n`): cheap enough for
the API's hot path, and read whole, without locks (one event loop writes them), by `Runtime.stats()`
for /stats and by a metrics exposition at scrape time. A counter only ever grows; the few gauges
(the lease's regions, the last reconcile report per region) say what is true now.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

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
# confirmed truth of now (a look at AWS is owed, or the database is down and memory answered).
ANSWER_HIT = "HIT"
ANSWER_MISS = "MISS"
ANSWER_STALE = "STALE"
# Why an answer carries X-Cache-Stale.
STALE_AWS_ERROR = "aws-error"  # a part could not be confirmed at the last look; another look is owed
STALE_UNCONFIRMED = "unconfirmed"  # not confirmed against AWS for longer than the bound, or since AWS failed
STALE_DATABASE = "database-unavailable"  # the database is down: the record this process last read

# Outcomes of the background looks owed (service.ingest.healer).
HEAL_ATTEMPTED = "attempted"
HEAL_HEALED = "healed"  # the look settled the need
HEAL_FAILED = "failed"  # AWS still could not answer (all or part): retried after a backoff
HEAL_DROPPED = "dropped"  # the look found nothing to store (a stack that is not an image, an unplaced AMI gone)


@dataclass(slots=True, eq=False)
class Metrics:
    # Live lookups by outcome (LOOKUP_*).
    lookups: Counter[str] = field(default_factory=Counter)
    # AWS API calls by ("service.Operation", outcome) (CALL_*).
    aws_calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Queue messages and events by what became of them: received, poison, ignored (not an event we
    # read), duplicates, ignored_resources, ignored_amis (not about an image), applied, refreshed
    # (needed a targeted refresh), owed (a look AWS did not answer, kept for the healer), deleted,
    # delete_retries, delete_failures.
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
    # Since when (unix time) this process may be behind AWS in a region, by the two ways it hears of changes:
    # reconciling (from the loop's start until a pass works, and while passes fail) and the event queue (from
    # the consumer's start until a receive has emptied what was waiting, and while receiving or applying
    # fails). Absent: caught up. Answers confirmed before then carry `X-Cache-Stale: unconfirmed`.
    reconcile_behind_since: dict[str, float] = field(default_factory=dict)
    events_behind_since: dict[str, float] = field(default_factory=dict)
    # AWS as this process saw it, by region: when (unix time) AWS last answered a call (any answer, "not
    # found" and "access denied" included), and when a call last got no answer (throttled, 5xx, timeout,
    # connection error) with what went wrong. Reachable = the last answer is not older than the last failure.
    aws_last_answer: dict[str, float] = field(default_factory=dict)
    aws_last_failure: dict[str, float] = field(default_factory=dict)
    aws_last_error: dict[str, str] = field(default_factory=dict)
    # Describe answers that carried X-Cache-Stale, by reason (STALE_*).
    stale_answers: Counter[str] = field(default_factory=Counter)
    # Background looks at AWS still owed (HEAL_*), and how many are owed now (a gauge).
    heals: Counter[str] = field(default_factory=Counter)
    heal_backlog: int = 0
    # Database outages seen by requests, the requests answered 503 and those served stale from memory
    # meanwhile, and whether one is under way now (a gauge).
    database_outages: int = 0
    database_unavailable_answers: int = 0
    database_stale_answers: int = 0
    database_down: bool = False

    def behind_since(self, region: str) -> float | None:
        """Since when this process may be behind AWS in `region` (either way of hearing of changes), if it may."""
        reconcile = self.reconcile_behind_since.get(region)
        events = self.events_behind_since.get(region)
        if reconcile is None or events is None:
            return reconcile if events is None else events
        return min(reconcile, events)

    def aws_reachable(self, region: str) -> bool:
        """Whether AWS answered the last call this process made in `region` (True before any call)."""
        failure = self.aws_last_failure.get(region)
        return failure is None or self.aws_last_answer.get(region, 0.0) >= failure

    def live_lookups(self) -> int:
        """Live lookups that went to AWS, whatever their outcome."""
        return sum(self.lookups[outcome] for outcome in LOOKUPS_STARTED)
