"""How current this process's answers are: the state that changes answers (X-Cache-Stale, /readyz), not counters.

One `Freshness` per process, written by the components that find out (the AWS module, the reconciler,
the event consumer, the rechecker, the database outage tracker) and read by the API: whether AWS answers in
each region, since when this process may be behind AWS there, whether the database is down. Unlike the
counters in service.metrics, what is here decides what a request is answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class Freshness:
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
    # When (unix time) this process's own reconcile pass last listed each region whole (the database has
    # every replica's: service.store.listings); list answers are confirmed as of then.
    listed_at: dict[str, float] = field(default_factory=dict)
    # Rechecks owed now (service.ingest.rechecker), as /readyz reports them.
    rechecks_owed: int = 0
    # Whether a database outage is under way now (service.store.outage).
    database_down: bool = False

    def behind_since(self, region: str) -> float | None:
        """Since when this process may be behind AWS in `region` (either way of hearing of changes), if it may."""
        reconcile = self.reconcile_behind_since.get(region)
        events = self.events_behind_since.get(region)
        if reconcile is None or events is None:
            return reconcile if events is None else events
        return min(reconcile, events)

    def unconfirmed(self, region: str, confirmed: float, *, now: float, bound: float) -> bool:
        """Whether an answer AWS confirmed at `confirmed` (unix time) must say so (`X-Cache-Stale: unconfirmed`):
        not confirmed for longer than `bound` (the staleness bound), or not since this process may have fallen
        behind AWS in `region`. The one rule, for a describe's record and a list's listing alike."""
        if now - confirmed > bound:
            return True
        if self.reconcile_behind_since or self.events_behind_since:
            behind_since = self.behind_since(region)
            return behind_since is not None and confirmed < behind_since
        return False

    def aws_reachable(self, region: str) -> bool:
        """Whether AWS answered the last call this process made in `region` (True before any call)."""
        failure = self.aws_last_failure.get(region)
        return failure is None or self.aws_last_answer.get(region, 0.0) >= failure
