"""One subscription's delivery (`Deliverer`): its state and its step, which tells the transitions after the
subscription's cursor to its sink, in change order, and moves the cursor only past what the sink accepted.

A step is one unit of work and says when it wants to run again (seconds); whatever runs it (the notifier, later
the loops' supervisor) sleeps that long or less when a change arrives. A step:

1. acts only while this replica holds the subscription's lease (one deliverer per subscription across replicas);
2. reads the subscription's row (its cursor, failures, whether it is disabled or must wait before trying again):
   kept in memory after what this deliverer wrote, read again after a while (a replay on another replica), when
   a replay here asks it to (`forget`) or when a compare-and-set finds the cursor moved;
3. takes the transitions after the cursor (from the process's one reader of them, service.notify.feed), and
   sends each that is news and matches the filters; one the sink does not accept ends the step: recorded as a
   failure with the time of the next attempt (exponential backoff with jitter, never before the sink's
   Retry-After), or, once its first failure is older than the give-up bound, kept as a dead letter and passed; a
   webhook's 410 disables the subscription;
4. moves the cursor past everything handled, with a compare-and-set on the cursor it read, so a replay made
   meanwhile (the API) is not overwritten.

A crash between the sink's acceptance and the cursor's move sends those transitions again (at least once): each
with the same webhook-id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta

from service.domain import deliveries
from service.domain.deliveries import Retries, Verdict
from service.domain.subscriptions import Subscription, is_news
from service.metrics import Metrics
from service.notify.feed import Feed
from service.notify.sinks import Sink
from service.store import subscriptions as store
from service.store.lease import Leases
from service.store.writer import Writer
from service.support.clock import utcnow

log = logging.getLogger(__name__)

# A replica without the lease asks again this often (the holder dying frees it at once).
LEASE_SECONDS = 5.0
# A disabled subscription looks this often whether a replay enabled it again.
DISABLED_SECONDS = 10.0
# The subscription's row, as this deliverer last read or wrote it, is trusted this long (a replay made on another
# replica is seen within it; one made here, or one a compare-and-set runs into, at once). A hundred subscriptions
# reading their row on every step of a burst queued behind each other for the database (225 ms a read, measured).
STATE_SECONDS = 5.0
# While a long batch is being sent, the cursor is written at least this often: about what a crash sends twice.
# (Each write is a transaction: a hundred subscriptions writing every second contend for SQLite's one writer.)
CHECKPOINT_SECONDS = 2.0

DELIVERED = "delivered"
FAILED = "failed"
DEAD_LETTER = "dead_letter"
DISABLED = "disabled"


@dataclass
class Deliverer:
    subscription: Subscription
    _: KW_ONLY
    sink: Sink
    writer: Writer
    # Where the cursor moves are written (together with other deliverers').
    cursors: store.Cursors
    feed: Feed
    leases: Leases
    retries: Retries
    poll_seconds: float
    metrics: Metrics
    clock: Callable[[], datetime] = utcnow
    draw: Callable[[], float] = random.random
    # Set when the process shuts down: the batch in hand stops after the delivery in flight and its cursor is written,
    # so the replica taking the lease over does not send again what this one delivered.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _state: store.State | None = field(default=None, init=False, repr=False)
    _state_read: float = field(default=0.0, init=False, repr=False)

    @property
    def name(self) -> str:
        return self.subscription.name

    async def step(self) -> float:
        """Deliver what is due; the seconds until this subscription wants another step."""
        if not await self.leases.holds(self.name):
            self.metrics.notify_lease.discard(self.name)
            self.metrics.notify_lag.pop(self.name, None)
            return LEASE_SECONDS
        self.metrics.notify_lease.add(self.name)
        now = self.clock()
        state = await self._current(now)
        if state.disabled_at is not None:
            self.metrics.notify_lag.pop(self.name, None)
            return DISABLED_SECONDS
        if state.next_attempt_at is not None and state.next_attempt_at > now:
            return (state.next_attempt_at - now).total_seconds()
        batch = await self.feed.after(state.delivered_seq)
        self.metrics.notify_lag[self.name] = (now - batch[0].notice.observed_at).total_seconds() if batch else 0.0
        if not batch:
            return self.poll_seconds
        cursor = state.delivered_seq  # where the row stands
        handled = cursor  # how far this step got
        accepted = False
        attempts, first_failure = state.attempts, state.first_failure_at
        checkpoint = time.monotonic()
        for item in batch:
            if self.stopping.is_set():
                break
            notice = item.notice
            filters = self.subscription.filters
            wanted = is_news(
                previous_exists=item.previous_exists, created=notice.created, subscribed_at=state.news_since
            ) and filters.matches(
                region=notice.region, image_id=notice.image_id, status=notice.status, previous=notice.previous
            )
            if not wanted:
                handled = notice.seq
                continue
            answer = await self.sink.send(notice)
            now = self.clock()
            if answer.verdict is Verdict.DELIVERED:
                self.metrics.deliveries[(self.name, DELIVERED)] += 1
                handled, accepted = notice.seq, True
                if time.monotonic() - checkpoint >= CHECKPOINT_SECONDS:
                    if not await self._advance(state, since=cursor, to=handled, now=now, delivered=True):
                        return 0.0  # replayed meanwhile: start again from the row
                    cursor, attempts, first_failure, checkpoint = handled, 0, None, time.monotonic()
                continue
            # Everything before this one is done: recorded first, so the failure below is this one's.
            if handled != cursor:
                if not await self._advance(state, since=cursor, to=handled, now=now, delivered=accepted):
                    return 0.0  # replayed meanwhile: start again from the row
                cursor, attempts, first_failure = handled, 0, None
            if answer.verdict is Verdict.DISABLE:
                self.metrics.deliveries[(self.name, DISABLED)] += 1
                log.warning("subscription %s disabled: %s", self.name, answer.error)
                self.forget()
                await store.disable(self.writer, name=self.name, reason=answer.error or "disabled", now=now)
                return DISABLED_SECONDS
            attempts += 1
            first_failure = first_failure or now
            error = answer.error or "not accepted"
            if self.retries.exhausted(first_failure=first_failure, now=now):
                self.metrics.deliveries[(self.name, DEAD_LETTER)] += 1
                log.error(
                    "subscription %s: change %d given up after %d attempts since %s (%s): kept as a dead letter",
                    self.name, notice.seq, attempts, first_failure.isoformat(), error,
                )  # fmt: skip
                self.forget()
                if not await store.dead_letter(
                    self.writer, name=self.name, since=cursor, notice=notice, body=deliveries.body(notice),
                    attempts=attempts, first_failure_at=first_failure, error=error, now=now,
                ):  # fmt: skip
                    return 0.0
                cursor = handled = notice.seq
                attempts, first_failure = 0, None
                continue
            self.metrics.deliveries[(self.name, FAILED)] += 1
            delay = self.retries.delay(attempts, retry_after=answer.retry_after, draw=self.draw)
            log.warning(
                "subscription %s: change %d not delivered (attempt %d: %s); next attempt in %.3gs",
                self.name, notice.seq, attempts, error, delay,
            )  # fmt: skip
            self.forget()
            await store.failed(
                self.writer, name=self.name, since=cursor, attempts=attempts, first_failure_at=first_failure,
                next_attempt_at=now + timedelta(seconds=delay), error=error, now=now,
            )  # fmt: skip
            return delay
        if handled != cursor:
            await self._advance(state, since=cursor, to=handled, now=self.clock(), delivered=accepted)
        if len(batch) == store.BATCH:
            return 0.0
        self.metrics.notify_lag[self.name] = 0.0
        return self.poll_seconds

    def forget(self) -> None:
        """Read the subscription's row again at the next step (a replay moved its cursor, or a failure was recorded)."""
        self._state = None

    async def _current(self, now: datetime) -> store.State:
        if self._state is None or time.monotonic() - self._state_read > STATE_SECONDS:
            self._state = await store.ensure(self.writer, name=self.name, kind=self.subscription.kind, now=now)
            self._state_read = time.monotonic()
        return self._state

    async def _advance(self, state: store.State, *, since: int, to: int, now: datetime, delivered: bool) -> bool:
        """The cursor moved from `since` to `to` (and the row kept in memory with it); False when a replay had moved
        it (the row is then read again)."""
        if not await self.cursors.advance(name=self.name, since=since, to=to, now=now, delivered=delivered):
            self.forget()
            return False
        self._state = dataclasses.replace(
            state, delivered_seq=to, attempts=0, first_failure_at=None, next_attempt_at=None,
            delivered_at=now if delivered else state.delivered_at,
        )  # fmt: skip
        return True
