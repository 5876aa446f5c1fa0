"""The shared resources of one process (engine, AWS clients, cache, loops), opened and closed together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.aws import Aws
from service.errors import DatabaseUnavailable
from service.ingest.consumer import Consumer
from service.ingest.healer import Healer
from service.ingest.lookup import Lookup
from service.ingest.reconciler import Reconciler
from service.metrics import Metrics
from service.notify.config import SubscriptionsFile
from service.notify.notifier import Notifier
from service.presign import UrlSigner
from service.settings import Settings
from service.store import db, queries
from service.store.cache import Cache
from service.store.keys import Keys
from service.store.lease import RegionLease
from service.store.outage import DatabaseOutage
from service.store.refresh_queue import RefreshQueue
from service.support.clock import utcnow
from service.support.stopping import sleep_until_stopped

log = logging.getLogger(__name__)


class ChangeSignal:
    """Wakes everyone waiting for "something changed" (the change stream), without holding up the writer."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def close(self) -> None:
        """Shutdown: wake every waiter now, and from now on never make one wait."""
        self.closed = True
        self.notify()

    async def wait(self, *, seconds: float) -> None:
        """Until the next change, or `seconds` at most."""
        if self.closed:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._event.wait()
        except TimeoutError:
            pass


PRUNE_INTERVAL_SECONDS = 3600.0
# Builds are derived this long after this process writes transitions (gathering a burst into one pass),
# and looked for at least this often otherwise (other replicas' writes).
BUILDS_GATHER_SECONDS = 0.2
BUILDS_POLL_SECONDS = 1.0
# While the database cannot be reached, derivation asks again this often.
BUILDS_OUTAGE_RETRY_SECONDS = 2.0


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    aws: Aws
    cache: Cache
    lookup: Lookup
    signer: UrlSigner
    reconciler: Reconciler
    consumer: Consumer
    lease: RegionLease
    metrics: Metrics
    # Secrets shared by the deployment's replicas (signing keys), from the database.
    keys: Keys
    # Looks at AWS still owed, taken in the background.
    healer: Healer
    # Database outages as requests meet them: logged once, summarised, ended by a probe.
    outage: DatabaseOutage
    changes: ChangeSignal = field(default_factory=ChangeSignal)
    # Wakes the build derivation when this process writes transitions.
    transitioned: ChangeSignal = field(default_factory=ChangeSignal)
    polling: bool = False
    # Set when shutdown begins (SIGTERM): readiness answers 503 and change streams end.
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    # Set with `draining`: the loops stop taking new work.
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # The subscriptions' deliverers (STATUSCACHE_SUBSCRIPTIONS_FILE); None without a file.
    notifier: Notifier | None = None
    # Tasks that finish what they hold before the process exits (an event batch being applied).
    draining_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _shutdown_deadline: float | None = None

    @classmethod
    def build(cls, settings: Settings, *, engine: AsyncEngine, aws: Aws) -> Runtime:
        """The components, all counting in one Metrics: the one the AWS clients count their calls in."""
        cache = Cache(engine, retry_seconds=settings.heal_backoff_initial_seconds)
        metrics = aws.metrics
        outage = DatabaseOutage(engine, metrics=metrics)
        runtime = cls(
            settings=settings,
            engine=engine,
            aws=aws,
            cache=cache,
            lookup=Lookup(cache=cache, aws=aws, settings=settings, metrics=metrics, outage=outage),
            signer=UrlSigner(
                aws, expires_seconds=settings.presign_expires_seconds, reuse_seconds=settings.presign_reuse_seconds
            ),
            reconciler=Reconciler(cache=cache, aws=aws, settings=settings, metrics=metrics),
            consumer=Consumer(cache=cache, aws=aws, settings=settings, metrics=metrics),
            lease=RegionLease(engine, metrics=metrics),
            metrics=metrics,
            keys=Keys(engine),
            healer=Healer(cache=cache, queue=RefreshQueue(engine), aws=aws, settings=settings, metrics=metrics),
            outage=outage,
        )
        cache.on_owed = runtime.healer.wake
        cache.subscribe(runtime.lookup.forget)
        cache.subscribe(lambda results: runtime.changes.notify() if any(r.changed for r in results) else None)
        cache.subscribe(
            lambda results: runtime.transitioned.notify() if any(r.transitioned for r in results) else None
        )
        return runtime

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        settings: Settings,
        *,
        poll: bool,
        heal: bool = True,
        background: list[Coroutine[Any, Any, None]] | None = None,
        subscriptions: SubscriptionsFile | None = None,
    ) -> AsyncIterator[Runtime]:
        """Prepare the schema, open clients, start the loops; close everything on exit.

        `poll`: the reconciler and the event consumer. `heal`: the looks at AWS still owed, which every
        serving process takes (an API replica's own live lookups can leave one owed).
        """
        if settings.is_sqlite:
            # The embedded default migrates itself; a shared database is migrated by an operator.
            await db.migrate(settings.database_url)
        engine = db.create_engine(settings)
        aws = Aws(metrics=Metrics())
        runtime = cls.build(settings, engine=engine, aws=aws)
        try:
            await db.check_schema(engine)
            if poll:
                runtime.start(
                    runtime.reconciler.run(stop=runtime.stop, region_gate=runtime.lease.holds), name="reconciler"
                )
                if settings.events_queue_urls:
                    runtime.start(runtime.consumer.run(stop=runtime.stop), name="consumer", drains=True)
                runtime.start(runtime.prune_forever(), name="pruner")
            if heal:
                runtime.start(runtime.healer.run(stop=runtime.stop), name="healer")
            # Every process derives builds: API replicas write transitions too (live look-ups).
            runtime.start(runtime.derive_builds_forever(), name="builds")
            for coroutine in background or ():
                runtime.start(coroutine, name="background")
            if subscriptions is not None:
                runtime.notify(subscriptions)
            runtime.polling = poll
            yield runtime
        finally:
            await runtime.close()

    def notify(self, subscriptions: SubscriptionsFile) -> Notifier:
        """Start delivering the subscriptions of `subscriptions` (and of each version SIGHUP loads)."""
        self.notifier = Notifier(
            subscriptions, engine=self.engine, aws=self.aws, metrics=self.metrics, settings=self.settings,
            start=lambda coroutine, name: self.start(coroutine, name=name),
            wake=lambda seconds: self.transitioned.wait(seconds=seconds),
        )  # fmt: skip
        self.notifier.start()
        return self.notifier

    def start(self, coroutine: Coroutine[Any, Any, None], *, name: str, drains: bool = False) -> None:
        """Run a loop until close; with `drains`, close lets it finish its work in hand (it watches `stop`)."""
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_log_crash)
        self.tasks.append(task)
        if drains:
            self.draining_tasks.add(task)

    def begin_shutdown(self) -> None:
        """The first step of shutting down (SIGTERM): not ready any more, streams end, loops stop taking work.

        Everything after must be done within `shutdown_seconds` of this moment.
        """
        if self.draining.is_set():
            return
        log.info("shutting down: draining within %gs", self.settings.shutdown_seconds)
        self._shutdown_deadline = asyncio.get_running_loop().time() + self.settings.shutdown_seconds
        self.draining.set()
        self.stop.set()
        self.changes.close()

    async def close(self) -> None:
        self.begin_shutdown()
        assert self._shutdown_deadline is not None
        finishing = [task for task in self.draining_tasks if not task.done()]
        if finishing:
            remaining = self._shutdown_deadline - asyncio.get_running_loop().time()
            _, late = await asyncio.wait(finishing, timeout=max(0.0, remaining))
            if late:
                names = ", ".join(task.get_name() for task in late)
                log.warning("cancelling %s: not finished within the shutdown bound", names)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.notifier is not None:
            await self.notifier.close()
        await self.lease.release_all()
        await self.outage.close()
        await self.aws.close()
        self.cache.close()
        await self.engine.dispose()

    async def prune_forever(self) -> None:
        """Retention: drop history older than STATUSCACHE_HISTORY_DAYS, hourly, in small transactions."""
        while not self.stop.is_set():
            older_than = utcnow() - timedelta(days=self.settings.history_days)
            try:
                async with db.translated():
                    removed = await queries.prune(self.engine, older_than=older_than)
                if removed:
                    log.info("pruned %d history rows older than %s", removed, older_than.isoformat())
            except DatabaseUnavailable as exc:
                log.warning("pruning history failed (%s); trying again at the next pass", exc)
            except Exception:
                log.exception("pruning history failed")
            if await sleep_until_stopped(self.stop, PRUNE_INTERVAL_SECONDS):
                return

    async def derive_builds_forever(self) -> None:
        """Builds follow the transitions: derived shortly after this process writes some, and every second
        for other replicas' writes (service.store.builds)."""
        log.info("build derivation started")
        while not self.stop.is_set():
            try:
                self.metrics.builds_derived += await self.cache.derive_builds()
            except DatabaseUnavailable as exc:
                # An outage is not a fault of this code: one line, as the consumer and the healer say it.
                log.warning("deriving builds failed (%s); retrying in %gs", exc, BUILDS_OUTAGE_RETRY_SECONDS)
                if await sleep_until_stopped(self.stop, BUILDS_OUTAGE_RETRY_SECONDS):
                    break
                continue
            except Exception:
                log.exception("deriving builds failed; retrying")
            await self.transitioned.wait(seconds=BUILDS_POLL_SECONDS)
            if await sleep_until_stopped(self.stop, BUILDS_GATHER_SECONDS):
                break
        log.info("build derivation stopped")

    def stats(self) -> dict[str, Any]:
        """/stats: what the metrics say, in the shape clients already read."""
        metrics = self.metrics
        return {
            "live_lookups": metrics.live_lookups(),
            "reconcile": {region: dict(report) for region, report in metrics.reconcile_reports.items()},
            "reconcile_passes": metrics.reconcile_passes,
            "reconcile_lease": sorted(metrics.reconcile_lease),
            "events": dict(metrics.events),
            "targeted_refreshes": metrics.targeted_refreshes,
        }

    async def readiness(self) -> dict[str, bool]:
        """What "ready" means: this process can serve what it has — the database answers and its schema is
        current. AWS is not a condition (a cache is most needed when AWS is down): see `upstream`."""
        if self.draining.is_set():
            return {"accepting_requests": False}
        checks = {"database": False, "schema": False}
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            checks["database"] = True
            checks["schema"] = await db.schema_is_current(self.engine)
        except Exception as exc:  # readiness reports, it does not raise
            unavailable = db.unavailable(exc)
            if unavailable is not None:
                # Logged once per outage by the tracker, not once per load balancer probe.
                self.outage.noticed(unavailable)
            else:
                log.warning("readiness check failed: %s", exc)
        return checks

    def upstream(self) -> dict[str, Any]:
        """AWS and reconciliation as this process sees them, for /readyz's body (never a readiness condition)."""
        metrics = self.metrics

        def times(by_region: dict[str, float]) -> dict[str, str | None]:
            return {region: _iso(since) for region, since in sorted(by_region.items())}

        return {
            "aws": {
                region: {
                    "reachable": metrics.aws_reachable(region),
                    "lastAnswer": _iso(metrics.aws_last_answer.get(region)),
                    "lastFailure": _iso(metrics.aws_last_failure.get(region)),
                    **({"lastError": metrics.aws_last_error[region]} if not metrics.aws_reachable(region) else {}),
                }
                for region in self.settings.regions
            },
            "reconcile": {
                "polling": self.polling,
                "firstPassDone": self.reconciler.first_pass_done.is_set(),
                "behindSince": times(metrics.reconcile_behind_since),
            },
            "events": {"behindSince": times(metrics.events_behind_since)},
            "owedLooks": metrics.heal_backlog,
            "databaseOutage": metrics.database_down,
        }


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s crashed", task.get_name(), exc_info=task.exception())
