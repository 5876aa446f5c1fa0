"""Evidence capture: when a build ends, its stack events, log streams and log events are read and kept.

Driven by the builds table: a build that ended (service.domain.builds, derived from the transitions events and
reconciliation write) and whose evidence is not kept is owed a capture. The step wakes when this process writes
transitions and looks every few seconds otherwise (other replicas' writes, the reconciler's). A capture is stored
whole or not at all: AWS not answering (throttled, 5xx) leaves the build owed, and it is tried again with a
backoff per build, so a half-read build is never served as its whole evidence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service import aws as aws_calls
from service.aws import Aws, calls_made, is_unknown
from service.domain import evidence as domain
from service.domain.builds import COMPLETE
from service.errors import AwsError, AwsNotFound, DatabaseUnavailable
from service.ingest.lookup import TokenBucket
from service.settings import Settings
from service.store import db
from service.store import evidence as store
from service.store.writer import Writer
from service.support.clock import utcnow
from service.support.loops import Backoff, Loop, Pauses
from service.support.signal import ChangeSignal

log = logging.getLogger(__name__)

# Looked for at least this often (other replicas' and the reconciler's builds), and this long after this
# process writes transitions (the build derivation settles first).
EVIDENCE_POLL_SECONDS = 2.0
EVIDENCE_SETTLE_SECONDS = 0.5
EVIDENCE_OUTAGE_RETRY_SECONDS = 2.0
# Pages read per resource at most: CloudFormation gives 100 events a page, CloudWatch 50 streams.
MAX_PAGES = 100


@dataclass(kw_only=True)
class EvidenceCapture:
    engine: AsyncEngine
    writer: Writer
    aws: Aws
    settings: Settings
    transitioned: ChangeSignal
    clock: Callable[[], datetime] = utcnow
    captured: int = field(default=0, init=False)
    deferred: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self._budgets = {region: TokenBucket(rate=settings.evidence_captures_per_second) for region in settings.regions}
        self._slots = asyncio.Semaphore(settings.evidence_concurrency)
        # A build AWS did not answer for waits before its next try, doubling.
        self._owed = Pauses[tuple[str, str]](
            Backoff(settings.recheck_backoff_initial_seconds, settings.recheck_backoff_max_seconds)
        )
        # Which replica captures a region: the reconciler's lease holder (None: this process, always).
        self._region_gate: Callable[[str], Awaitable[bool]] | None = None

    async def step(self) -> float:
        """Capture what is owed and allowed now; the seconds until the next look."""
        since = self.clock() - timedelta(hours=self.settings.evidence_lookback_hours)
        regions = [
            region for region in self.settings.regions if self._region_gate is None or await self._region_gate(region)
        ]
        if not regions:
            return EVIDENCE_POLL_SECONDS
        async with db.translated():
            owed = await store.owed(
                self.engine, regions=regions, since=since, limit=4 * self.settings.evidence_concurrency
            )
        paused = self._owed.paused(now=self.clock())
        ready = [item for item in owed if (item.region, item.image_id) not in paused]
        started = []
        for item in ready:
            # Captures have their own per-region budget: they never take a live lookup's.
            if self._budgets[item.region].take() > 0:
                break
            started.append(item)
        if started:
            await asyncio.gather(*(self._capture_owed(item) for item in started))
        more = len(started) < len(ready) or len(owed) == 4 * self.settings.evidence_concurrency
        return 1.0 / self.settings.evidence_captures_per_second if more else EVIDENCE_POLL_SECONDS

    async def _capture_owed(self, item: store.Owed) -> None:
        key = (item.region, item.image_id)
        async with self._slots:
            try:
                capture = await self.capture(item)
            except AwsError as exc:
                if not is_unknown(exc):
                    raise
                # Not knowing is not "nothing there": nothing stored, the build stays owed, tried again later.
                self.deferred += 1
                self._owed.failed(key, now=self.clock())
                log.warning("evidence of %s in %s owed: %s (%s)", item.image_id, item.region, exc.message, exc.code)
                return
        async with db.translated():
            await store.save(self.writer, capture)
        self._owed.succeeded(key)
        self.captured += 1

    async def capture(self, item: store.Owed) -> store.Capture:
        """Read one ended build's evidence from AWS (AwsError when AWS does not answer: nothing is kept)."""
        region, image_id = item.region, item.image_id
        bound = (
            domain.Bound(self.settings.evidence_complete_max_bytes, self.settings.evidence_complete_max_events)
            if item.outcome == COMPLETE
            else domain.Bound(self.settings.evidence_failed_max_bytes, self.settings.evidence_failed_max_events)
        )
        with calls_made() as tally:
            stack_events = await self._stack_events(region=region, stack=item.stack_id or image_id)
            streams = await self._log_streams(region=region, image_id=image_id)
            read: dict[str, list[dict[str, Any]]] = {}
            budget = domain.Bound(bound.max_bytes, bound.max_events)
            read_cut = False
            for stream in streams or ():
                events, cut = await self._tail(
                    region=region, image_id=image_id, stream=stream["logStreamName"], bound=budget
                )
                read[stream["logStreamName"]] = events
                read_cut = read_cut or cut
            kept = domain.keep_log_events(read, bound)
        reason = await self._imagebuilder_reason(region=region, image_id=image_id)
        return store.Capture(
            region=region,
            image_id=image_id,
            build_start=item.build_start,
            outcome=item.outcome,
            captured_at=self.clock(),
            ended_at=item.ended_at,
            stack_events=stack_events,
            log_streams=[domain.log_stream_document(stream) for stream in streams] if streams is not None else None,
            log_events=kept.events,
            imagebuilder_reason=reason,
            cut=kept.cut or read_cut,
            aws_calls=tally[0],
        )

    async def _stack_events(self, *, region: str, stack: str) -> list[dict[str, Any]] | None:
        """The stack's events, every page; `stack` its id where known (answered after deletion too), else name."""
        events: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(MAX_PAGES):
            try:
                page = await aws_calls.stack_events(self.aws, region=region, stack_name=stack, next_token=token)
            except AwsNotFound:
                return None if not events else events
            except AwsError as exc:
                if exc.code == "ValidationError":
                    return None if not events else events
                raise
            events.extend(domain.stack_event_document(event) for event in page["StackEvents"])
            token = page.get("NextToken")
            if not token:
                break
        return events

    async def _log_streams(self, *, region: str, image_id: str) -> list[dict[str, Any]] | None:
        streams: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(MAX_PAGES):
            try:
                page = await aws_calls.log_streams(
                    self.aws, region=region, group=domain.log_group_name(image_id), next_token=token
                )
            except AwsNotFound:
                return None
            streams.extend(page["logStreams"])
            token = page.get("nextToken")
            if not token:
                break
        return streams

    async def _tail(
        self, *, region: str, image_id: str, stream: str, bound: domain.Bound
    ) -> tuple[list[dict[str, Any]], bool]:
        """A stream's events from its end backwards until the bound (a failure is told in the last lines): the
        events oldest first, and whether the bound stopped the reading before the stream's head."""
        pages: list[list[dict[str, Any]]] = []
        count = size = 0
        token: str | None = None
        while True:
            try:
                answer = await aws_calls.log_events(
                    self.aws, region=region, group=domain.log_group_name(image_id), stream=stream,
                    start_from_head=False, next_token=token,
                )  # fmt: skip
            except AwsNotFound:
                break
            events = [{"timestamp": e["timestamp"], "message": e["message"]} for e in answer.get("events") or ()]
            if not events:
                break
            pages.append(events)
            count += len(events)
            size += sum(domain.event_cost(event) for event in events)
            following = answer.get("nextBackwardToken")
            if count >= bound.max_events or size >= bound.max_bytes:
                return [event for page in reversed(pages) for event in page], True
            # CloudWatch answers the same token at the head of the stream.
            if not following or following == token:
                break
            token = following
        return [event for page in reversed(pages) for event in page], False

    async def _imagebuilder_reason(self, *, region: str, image_id: str) -> str | None:
        """Image Builder's failure reason, as the build's transitions recorded it from GetImage: no second call."""
        async with db.translated():
            kept = await store.build_reason(self.engine, region=region, image_id=image_id)
        return kept

    def loop(self, *, region_gate: Callable[[str], Awaitable[bool]] | None = None) -> Loop:
        """The capture loop; with `region_gate`, only the replica it lets through captures a region's builds (one
        writer per build, as one reconciler per region)."""
        self._region_gate = region_gate
        return Loop(
            name="evidence capture",
            step=self.step,
            backoff=Backoff(EVIDENCE_OUTAGE_RETRY_SECONDS, EVIDENCE_OUTAGE_RETRY_SECONDS),
            quiet=(DatabaseUnavailable,),
            wake=self.transitioned.wait,
            settle_seconds=EVIDENCE_SETTLE_SECONDS,
            detail=f"at most {self.settings.evidence_concurrency} at once, "
            f"{self.settings.evidence_captures_per_second:g}/s per region",
        )

