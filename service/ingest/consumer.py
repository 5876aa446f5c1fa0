"""The SQS event loop: receive -> parse -> gather -> decide -> apply (or refresh one image) -> delete, per queue.

What an event means is decided in service.domain.plans; this module does the reading and writing around it.

An event whose look at AWS gets no answer (a targeted refresh, or EC2 naming an unplaced AMI's image) is
not lost to it: a recheck is recorded as owed (service.domain.rechecks) in the same transaction that
records the event as processed, and the rechecker takes it from there. That, rather than leaving the
message on the queue, because a queue gives up after maxReceiveCount deliveries (to the dead-letter queue,
where the service no longer sees it) while an AWS outage can last longer; and because one event in a batch
of ten should not hold back the other nine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from service.aws import Aws, QueueMessage, queue_region
from service.domain import events
from service.domain.models import Change, Source
from service.domain.plans import Facts, decide, is_image_resource, worth_storing
from service.domain.rechecks import KIND_AMI, KIND_IMAGE, Recheck
from service.errors import AwsError, DatabaseUnavailable, MalformedEvent
from service.freshness import Freshness
from service.ingest.observe import observe_live
from service.metrics import Metrics
from service.settings import Settings
from service.store.cache import Cache, Poison
from service.support.clock import utcnow
from service.support.loops import Backoff, Loop
from service.support.singleflight import SingleFlight

log = logging.getLogger(__name__)

WAIT_SECONDS = 20
MAX_MESSAGES = 10
DELETE_ATTEMPTS = 3


def lag_seconds(event_time: datetime) -> float:
    """Seconds from an event's time to now; never negative (EventBridge's clock and ours differ a little)."""
    return max(0.0, (utcnow() - event_time).total_seconds())


class Refresher:
    """Targeted refreshes of one image, coalesced per image and bounded in concurrency."""

    def __init__(
        self, *, cache: Cache, aws: Aws, concurrency: int, metrics: Metrics, timeout_seconds: float | None = None
    ) -> None:
        self.cache = cache
        self.aws = aws
        self._timeout_seconds = timeout_seconds
        self._limit = asyncio.Semaphore(concurrency)
        self._flights: SingleFlight[tuple[str, str], None] = SingleFlight()
        self.metrics = metrics

    async def refresh(self, *, region: str, image_id: str, happened_at: datetime) -> None:
        await self._flights.run(
            (region, image_id), lambda: self._refresh(region=region, image_id=image_id, happened_at=happened_at)
        )

    async def _refresh(self, *, region: str, image_id: str, happened_at: datetime) -> None:
        async with self._limit:
            self.metrics.targeted_refreshes += 1
            deadline = (
                asyncio.get_running_loop().time() + self._timeout_seconds if self._timeout_seconds is not None else None
            )
            change = await observe_live(self.aws, region=region, image_id=image_id, deadline=deadline)
            stored = await self.cache.read_parts(region=region, image_id=image_id)
            if not worth_storing(change, stored):
                return
            await self.cache.apply(replace(change, source=Source.EVENT, happened_at=happened_at))


@dataclass(eq=False, kw_only=True)
class Consumer:
    cache: Cache
    aws: Aws
    settings: Settings
    metrics: Metrics
    freshness: Freshness
    refresher: Refresher = field(init=False)
    # Batches being applied now, by region: the queue is not caught up while one is.
    _handling: Counter[str] = field(default_factory=Counter, init=False)

    def __post_init__(self) -> None:
        self.refresher = Refresher(
            cache=self.cache, aws=self.aws, concurrency=self.settings.refresh_concurrency, metrics=self.metrics,
            timeout_seconds=self.settings.live_lookup_timeout_seconds,
        )

    # --- one batch -------------------------------------------------------------------------------

    async def handle(self, *, queue_url: str, messages: list[QueueMessage]) -> None:
        """Apply a batch, commit, then delete its messages. Raises (deleting nothing) if the commit fails."""
        self.metrics.events["received"] += len(messages)
        parsed: list[tuple[QueueMessage, events.Event]] = []
        poison: list[Poison] = []
        for message in messages:
            try:
                event = events.parse(message.body)
            except MalformedEvent as exc:
                poison.append(Poison(queue_url, message.message_id, message.body, str(exc)))
                self.metrics.events["poison"] += 1
                log.warning(
                    "unreadable message %s kept as poison: %s", message.message_id, exc,
                    extra={"message_id": message.message_id},
                )
                continue
            if isinstance(event, events.NotOurs):
                self.metrics.events["ignored"] += 1
                continue
            parsed.append((message, event))

        seen = await self.cache.seen_events([event.envelope.event_id for _, event in parsed])
        fresh: dict[str, events.Event] = {}
        for _, event in parsed:
            event_id = event.envelope.event_id
            if event_id in seen or event_id in fresh:
                self.metrics.events["duplicates"] += 1
                continue
            fresh[event_id] = event

        # In message order: changes accumulate, and an event that needs a look-up first commits what came
        # before it, so history keeps the order things happened in. One look-up per image per batch.
        pending: list[Change] = []
        rechecks: list[Recheck] = []
        refreshed: set[tuple[str, str]] = set()
        unanswered: set[tuple[str, str]] = set()
        # What events needing a look said (service.domain.rechecks' news): kept with the recheck of an image
        # whose look got no answer, so it is merged as soon as the image is stored, not when AWS answers.
        news: list[Change] = []
        for event in fresh.values():
            try:
                facts = await self.gather(event)
            except AwsError as exc:
                # Only an AMI event asks AWS here: which image, if any, is this AMI's. Owe that question.
                if not isinstance(event, events.AmiStateEvent):
                    raise
                rechecks.append(self._recheck(event, kind=KIND_AMI, subject=event.ami_id, error=exc))
                continue
            plan = decide(event, facts)
            if plan.ignored is not None:
                self.metrics.events[plan.ignored] += 1
            if plan.change is not None:
                pending.append(plan.change)
            elif plan.refresh is None and plan.ignored is None:
                # News the cache already reflects (repeated, or older than what is stored).
                self.metrics.events["stale"] += 1
            if plan.news is not None:
                news.append(plan.news)
            if plan.refresh is not None and plan.refresh not in refreshed:
                refreshed.add(plan.refresh)
                await self.cache.apply_many(pending)
                self._applied(pending)
                pending = []
                region, image_id = plan.refresh
                try:
                    await self.refresher.refresh(region=region, image_id=image_id, happened_at=event.envelope.time)
                    self.metrics.event_lag.observe(lag_seconds(event.envelope.time))
                except AwsError as exc:
                    unanswered.add(plan.refresh)
                    rechecks.append(self._recheck(event, kind=KIND_IMAGE, subject=image_id, error=exc))
                self.metrics.events["refreshed"] += 1
        # A look that did answer saw everything these events said, and more.
        waiting = [change for change in news if (change.region, change.image_id) in unanswered]
        # The ids are recorded with the last changes and the rechecks owed: a crash before this point redelivers
        # the batch, and after it nothing the events said depends on the messages any more.
        await self.cache.apply_many(pending, event_ids=list(fresh), poison=poison, owed=rechecks, news=waiting)
        self.metrics.events["rechecks_owed"] += len(rechecks)
        self._applied(pending)
        await self._delete(queue_url=queue_url, messages=messages)

    def _applied(self, changes: list[Change]) -> None:
        """Count committed event changes, and how long each took from EventBridge's event time to here."""
        self.metrics.events["applied"] += len(changes)
        for change in changes:
            if change.happened_at is not None:
                self.metrics.event_lag.observe(lag_seconds(change.happened_at))

    def _recheck(self, event: events.Event, *, kind: str, subject: str, error: AwsError) -> Recheck:
        region = event.envelope.region
        log.warning(
            "event %s: AWS did not answer (%s); a recheck of %s %s/%s is owed",
            event.envelope.event_id, error.message, kind, region, subject,
            extra={"region": region, "image_id": subject, "event_id": event.envelope.event_id},
        )
        return Recheck(
            region=region,
            kind=kind,
            subject=subject,
            requested_at=utcnow(),
            source=Source.EVENT,
            reason=f"event {event.envelope.event_id}: {error.code or type(error).__name__}",
            happened_at=event.envelope.time,
        )

    async def gather(self, event: events.Event) -> Facts:
        """What `decide` needs to know about the event's image, read from the cache (and EC2 for an unplaced AMI)."""
        region = event.envelope.region
        now = utcnow()
        if isinstance(event, events.StackStatusEvent):
            return Facts(now, parts=await self.cache.read_parts(region=region, image_id=event.stack_name))
        if isinstance(event, events.ResourceStatusEvent):
            if not is_image_resource(event):
                return Facts(now)  # decided without reading anything
            return Facts(now, parts=await self.cache.read_parts(region=region, image_id=event.stack_name))
        if isinstance(event, events.ImagebuilderStateEvent):
            image_id = await self.cache.image_for(region=region, imagebuilder_arn=event.arn) or (
                await self.cache.image_by_lower_id(region=region, lower_id=event.image_id_hint)
            )
        else:
            image_id = await self.cache.image_for(region=region, ami_id=event.ami_id)
            if image_id is None:
                # Only EC2 can say which image (if any) an AMI the cache has not seen belongs to.
                return Facts(now, ami=await self.aws.describe_ami(region=region, ami_id=event.ami_id))
        if image_id is None:
            return Facts(now)
        return Facts(now, image_id=image_id, parts=await self.cache.read_parts(region=region, image_id=image_id))

    async def _delete(self, *, queue_url: str, messages: list[QueueMessage]) -> None:
        region = queue_region(queue_url, default=self.settings.default_region)
        pending = {str(index): message.receipt_handle for index, message in enumerate(messages)}
        for attempt in range(DELETE_ATTEMPTS):
            failed = await self.aws.delete_messages(region=region, queue_url=queue_url, receipt_handles=pending)
            self.metrics.events["deleted"] += len(pending) - len(failed)
            pending = {entry: pending[entry] for entry in failed}
            if not pending:
                return
            self.metrics.events["delete_retries"] += len(pending)
            await asyncio.sleep(0.1 * 2**attempt)
        # Redelivered later; the event ids are recorded, so they will count as duplicates.
        self.metrics.events["delete_failures"] += len(pending)
        log.warning("%d messages could not be deleted from %s", len(pending), queue_url)

    # --- the receivers ---------------------------------------------------------------------------

    async def receive_once(
        self, *, queue_url: str, wait_seconds: int = WAIT_SECONDS, stop: asyncio.Event | None = None
    ) -> int:
        """One long poll and its batch. With `stop`, a poll still waiting when it is set is abandoned (SQS
        makes anything it had handed out visible again), while a batch already received is handled whole."""
        region = queue_region(queue_url, default=self.settings.default_region)
        receive = self.aws.receive_messages(region=region, queue_url=queue_url, wait_seconds=wait_seconds)
        messages = await receive if stop is None else await _unless_stopped(receive, stop)
        if messages:
            self._handling[region] += 1
            try:
                await self.handle(queue_url=queue_url, messages=messages)
            finally:
                self._handling[region] -= 1
        return len(messages or ())

    def receivers(self, *, stop: asyncio.Event) -> list[Loop]:
        """STATUSCACHE_EVENTS_RECEIVERS receivers for every queue, each a loop of `receive_once` until `stop`.

        From now until a receive has emptied what a queue held, what changed while this process was not
        running is unknown in its region: answers say so.
        """
        urls = self.settings.events_queue_urls
        started = time.time()
        for url in urls:
            self.freshness.events_behind_since.setdefault(
                queue_region(url, default=self.settings.default_region), started
            )
        return [
            self.receiver(queue_url=url, stop=stop, name=f"event receiver {index + 1} of {url}")
            for url in urls
            for index in range(self.settings.events_receivers)
        ]

    def stopped(self) -> None:
        """Once its receivers have stopped: what the consumer did in this process's life, for the operator (how
        many events it received, applied, found duplicate, deleted...)."""
        log.info("event consumer stopped: %s", dict(self.metrics.events))

    def receiver(self, *, queue_url: str, stop: asyncio.Event, name: str = "event receiver") -> Loop:
        """One receiver of `queue_url`: long polls one after the other; a poll still waiting when `stop` is set
        is abandoned, a batch in hand is handled whole (so its loop drains)."""
        region = queue_region(queue_url, default=self.settings.default_region)

        async def step() -> float:
            try:
                received = await self.receive_once(queue_url=queue_url, stop=stop)
            except Exception:
                # Until the queue is read again, changes can happen that the cache does not hear of.
                self.freshness.events_behind_since.setdefault(region, time.time())
                raise
            if received < MAX_MESSAGES and not self._handling[region]:
                # Caught up: what the queue held when it came back has been applied (no receiver of the
                # region is still applying a batch it got).
                self.freshness.events_behind_since.pop(region, None)
            return 0.0

        return Loop(
            name=name,
            step=step,
            backoff=Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds),
            # Expected in an outage: one line, not a traceback every backoff.
            quiet=(AwsError, DatabaseUnavailable),
        )


async def _unless_stopped(receive: Coroutine[Any, Any, list[QueueMessage]], stop: asyncio.Event) -> list[QueueMessage]:
    """The poll's messages, or none when `stop` is set first (the poll is then cancelled)."""
    polling = asyncio.ensure_future(receive)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({polling, stopping}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        polling.cancel()
        raise
    finally:
        stopping.cancel()
    if polling.done():
        return polling.result()
    polling.cancel()
    await asyncio.gather(polling, return_exceptions=True)
    return []
