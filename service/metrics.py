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
LOOKUP_COALESCED = "coalesced"  # joined a lookup of the same image already in flight
# The outcomes of lookups that went to AWS (/stats' "live_lookups" counts these).
LOOKUPS_STARTED = (LOOKUP_OK, LOOKUP_NOT_FOUND, LOOKUP_THROTTLED, LOOKUP_ERROR)

# Outcomes of one AWS API call (after botocore's own retries).
CALL_OK = "ok"
CALL_THROTTLED = "throttled"
CALL_NOT_FOUND = "not_found"  # the resource does not exist: often a normal answer
CALL_ERROR = "error"


@dataclass(slots=True, eq=False)
class Metrics:
    # Live lookups by outcome (LOOKUP_*).
    lookups: Counter[str] = field(default_factory=Counter)
    # AWS API calls by ("service.Operation", outcome) (CALL_*).
    aws_calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Queue messages and events by what became of them: received, poison, ignored (not an event we
    # read), duplicates, ignored_resources, ignored_amis (not about an image), applied, refreshed
    # (needed a targeted refresh), deleted, delete_retries, delete_failures.
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
