"""Periodic reconciliation: list stacks and AMIs per region, look up what can still change, apply."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from service.aws import Aws, calls_made
from service.domain import status
from service.domain.models import (
    PART_CONFIG,
    PART_IMAGEBUILDER,
    AmiInfo,
    Change,
    ImagebuilderState,
    Source,
    StackInfo,
)
from service.errors import AwsError, DatabaseUnavailable
from service.freshness import Freshness
from service.ingest.observe import config_location, imagebuilder_for_stack, observation
from service.metrics import Metrics
from service.settings import Settings
from service.store.cache import Cache, Known
from service.support.clock import utcnow
from service.support.loops import Backoff, Loop

log = logging.getLogger(__name__)

IMAGEBUILDER_CONCURRENCY = 8


@dataclass
class PassReport:
    region: str
    images_seen: int = 0
    aws_calls: int = 0
    changed: int = 0
    transitions: int = 0
    gone: int = 0
    imagebuilder_lookups: int = 0
    # Changes that no event had already brought: how an operator sees whether events are healthy.
    corrected: int = 0
    # Images with a part AWS did not answer for: stored as last known, flagged, and owed a recheck.
    unconfirmed: int = 0


def needs_imagebuilder(stack: StackInfo, known: Known | None) -> bool:
    """Look the Image Builder image up only where it can still change, was never fetched, or a recheck is owed."""
    if known is None or not known.imagebuilder_fetched or known.stack_id != stack.stack_id or known.recheck_owed:
        return True
    if not status.stack_is_settled(stack.status):
        return True
    # Settled since we last looked: one more look catches the final Image Builder state.
    return known.stack_status != stack.status


@dataclass(eq=False, kw_only=True)
class Reconciler:
    cache: Cache
    aws: Aws
    settings: Settings
    metrics: Metrics
    freshness: Freshness
    # Set once a round over every region has worked (/readyz says whether it has).
    first_pass_done: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def run_pass(self, *, region: str) -> PassReport:
        # Only this pass's own calls (and those of the tasks it starts): live lookups, the rechecker and the
        # consumer call AWS at the same time, in the same process.
        with calls_made() as tally:
            report = await self._pass(region=region)
        report.aws_calls = tally[0]
        self.metrics.reconcile_reports[region] = dataclasses.asdict(report)
        self.metrics.reconcile_aws_calls[region] += report.aws_calls
        log.info(
            "reconciled %s: %d images, %d changed, %d transitions, %d gone, %d unconfirmed, %d AWS calls",
            region, report.images_seen, report.changed, report.transitions, report.gone, report.unconfirmed,
            report.aws_calls,
            extra={"region": region, "corrected": report.corrected},
        )
        return report

    async def _pass(self, *, region: str) -> PassReport:
        report = PassReport(region=region)
        started = utcnow()
        clock_started = time.monotonic()

        stacks: dict[str, StackInfo] = {}
        async for page in self.aws.list_image_stacks(region=region):
            for stack in page:
                stacks.setdefault(stack.name, stack)
        amis: dict[str, AmiInfo] = {}
        async for ami_page in self.aws.list_available_amis(region=region):
            for ami in ami_page:
                image_id = dict(ami.tags).get("parallelcluster:image_id")
                if image_id:
                    amis.setdefault(image_id, ami)
        known = await self.cache.known(region=region)

        to_fetch = [stack for stack in stacks.values() if needs_imagebuilder(stack, known.get(stack.name))]
        report.imagebuilder_lookups = len(to_fetch)
        limiter = asyncio.Semaphore(IMAGEBUILDER_CONCURRENCY)

        async def fetch(stack: StackInfo) -> tuple[str, ImagebuilderState | None]:
            async with limiter:
                return stack.name, await imagebuilder_for_stack(self.aws, region=region, stack_name=stack.name)

        fetched = dict(await asyncio.gather(*(fetch(stack) for stack in to_fetch)))

        reachable: dict[str, bool | None] = {}
        changes: list[Change] = []
        for image_id in sorted(set(stacks) | set(amis)):
            stack_or_none = stacks.get(image_id)
            ami_or_none = amis.get(image_id)
            config = await config_location(
                self.aws, region=region, stack=stack_or_none, ami=ami_or_none, reachable=reachable
            )
            imagebuilder = fetched.get(image_id)
            unknown = frozenset(
                ({PART_IMAGEBUILDER} if image_id in fetched and imagebuilder is None else set())
                | ({PART_CONFIG} if config is None else set())
            )
            report.unconfirmed += bool(unknown)
            changes.append(
                observation(
                    region=region, image_id=image_id, source=Source.RECONCILE, at=started, ami=ami_or_none,
                    stack=stack_or_none, imagebuilder=imagebuilder, config=config, unknown=unknown,
                )
            )
        for image_id, entry in known.items():
            if entry.exists and image_id not in stacks and image_id not in amis:
                # Both lists were complete and neither has it: the image is gone, as pcluster would say.
                changes.append(
                    observation(
                        region=region, image_id=image_id, source=Source.RECONCILE, at=started, ami=None, stack=None
                    )
                )
                report.gone += 1

        results = await self.cache.apply_many(changes)
        # Both lists were read whole and what they said is stored: the region's list answers are now true.
        await self.cache.listed(region=region, at=started)
        self.freshness.listed_at[region] = started.timestamp()
        report.images_seen = len(set(stacks) | set(amis))
        report.changed = sum(result.changed for result in results)
        report.transitions = sum(result.transitioned for result in results)
        report.corrected = sum(
            result.transitioned for result in results if known.get(result.image_id) is not None
        )
        self.metrics.reconcile_corrected[region] += report.corrected
        self.metrics.reconcile_region_passes[(region, "ok")] += 1
        self.metrics.reconcile_seconds[region].observe(time.monotonic() - clock_started)
        return report

    async def run_once(self) -> list[PassReport]:
        reports = [await self.run_pass(region=region) for region in self.settings.regions]
        self.metrics.reconcile_passes += 1
        self.first_pass_done.set()
        return reports

    def loop(self, *, region_gate: Callable[[str], Awaitable[bool]] | None = None) -> Loop:
        """Reconcile every region at start and every resync interval (sooner, backing off, after a failure).

        `region_gate` lets a fleet decide which replica reconciles a region (a lease); None means always.
        From now until a pass of a region works, what changed there while this process was not running is
        unknown: answers say so.
        """
        started = time.time()
        for region in self.settings.regions:
            self.freshness.reconcile_behind_since.setdefault(region, started)

        async def step() -> float:
            await self.reconcile(region_gate=region_gate)
            return self.settings.resync_seconds

        return Loop(
            name="reconciler",
            step=step,
            backoff=Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds),
            quiet=(AwsError, DatabaseUnavailable),
            detail=f"{','.join(self.settings.regions)} every {self.settings.resync_seconds:g}s",
        )

    async def reconcile(self, *, region_gate: Callable[[str], Awaitable[bool]] | None = None) -> None:
        """One round over every region (the loop's step). Raises the failed regions' errors, each noted with
        its region, once every region has been tried."""
        failures: list[Exception] = []
        for region in self.settings.regions:
            try:
                # Another replica holding the region's lease reconciles it: that counts as done here.
                if region_gate is None or await region_gate(region):
                    await self.run_pass(region=region)
                self.freshness.reconcile_behind_since.pop(region, None)
            except Exception as exc:
                self.metrics.reconcile_region_passes[(region, "error")] += 1
                self.freshness.reconcile_behind_since.setdefault(region, time.time())
                exc.add_note(f"reconcile pass for {region}")
                failures.append(exc)
        self.metrics.reconcile_passes += 1
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise ExceptionGroup("reconcile passes failed", failures)
        self.first_pass_done.set()
