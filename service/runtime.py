"""The shared resources of one process (engine, AWS clients, cache, components), wired, opened and closed together.

What runs in this process is read in one place, `Runtime.open`: each background loop is a component's step
run by service.support.loops. The loops' bodies live with their components (service.ingest), and what the
API reports about them with the API (service.api.health).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.aws import Aws
from service.errors import DatabaseUnavailable
from service.freshness import Freshness
from service.ingest.consumer import Consumer
from service.ingest.derivation import BuildDerivation
from service.ingest.evidence import EvidenceCapture
from service.ingest.lookup import Lookup
from service.ingest.rechecker import Rechecker
from service.ingest.reconciler import Reconciler
from service.ingest.retention import Retention
from service.metrics import Metrics
from service.notify.config import SubscriptionsFile
from service.notify.notifier import Notifier
from service.presign import UrlSigner
from service.settings import Settings
from service.store import db
from service.store.cache import Cache
from service.store.keys import Keys
from service.store.lease import Leases
from service.store.outage import DatabaseOutage
from service.store.rechecks import Rechecks
from service.support.loops import Backoff, Loop
from service.support.signal import ChangeSignal
from service.support.workers import Worker

log = logging.getLogger(__name__)

# A worker of `serve --workers` without the poller lease asks for it again this often (its holder dying frees it).
ELECTION_SECONDS = 2.0


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
    lease: Leases
    metrics: Metrics
    # How current answers are (X-Cache-Stale, /readyz): AWS reachability, being behind, the database down.
    freshness: Freshness
    # Secrets shared by the deployment's replicas (signing keys), from the database.
    keys: Keys
    # Rechecks (looks at AWS still owed), taken in the background.
    rechecker: Rechecker
    # Database outages as requests meet them: logged once, summarised, ended by a probe.
    outage: DatabaseOutage
    # History older than STATUSCACHE_HISTORY_DAYS dropped; builds derived from the transitions.
    retention: Retention
    builds: BuildDerivation
    # A build's stack events and logs, kept when it ends (ParallelCluster's image log operations after cleanup).
    evidence: EvidenceCapture
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
    # With `serve --workers`: this process's place among the workers, and the lease that elects the one of them
    # doing the background work (None: a process of its own, which does it unasked).
    worker: Worker | None = None
    poller_lease: Leases | None = None
    _shutdown_deadline: float | None = None

    @classmethod
    def build(cls, settings: Settings, *, engine: AsyncEngine, aws: Aws) -> Runtime:
        """The components, all counting in one Metrics and telling one Freshness: the AWS clients' own."""
        cache = Cache(engine, retry_seconds=settings.recheck_backoff_initial_seconds)
        metrics, freshness = aws.metrics, aws.freshness
        outage = DatabaseOutage(engine, metrics=metrics, freshness=freshness)
        transitioned = ChangeSignal()
        runtime = cls(
            settings=settings,
            engine=engine,
            aws=aws,
            cache=cache,
            lookup=Lookup(cache=cache, aws=aws, settings=settings, metrics=metrics, outage=outage),
            signer=UrlSigner(
                aws, expires_seconds=settings.presign_expires_seconds, reuse_seconds=settings.presign_reuse_seconds
            ),
            reconciler=Reconciler(cache=cache, aws=aws, settings=settings, metrics=metrics, freshness=freshness),
            consumer=Consumer(cache=cache, aws=aws, settings=settings, metrics=metrics, freshness=freshness),
            lease=Leases(engine, namespace="reconcile", held=metrics.reconcile_lease),
            metrics=metrics,
            freshness=freshness,
            keys=Keys(engine),
            rechecker=Rechecker(
                cache=cache, rechecks=Rechecks(cache.writer), aws=aws, settings=settings, metrics=metrics,
                freshness=freshness,
            ),
            outage=outage,
            retention=Retention(engine=engine, settings=settings),
            builds=BuildDerivation(cache=cache, metrics=metrics, transitioned=transitioned),
            evidence=EvidenceCapture(
                engine=engine, writer=cache.writer, aws=aws, settings=settings, transitioned=transitioned
            ),
            transitioned=transitioned,
        )
        cache.on_recheck_owed = runtime.rechecker.wake
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
        recheck: bool = True,
        background: list[Coroutine[Any, Any, None]] | None = None,
        subscriptions: SubscriptionsFile | None = None,
        worker: Worker | None = None,
    ) -> AsyncIterator[Runtime]:
        """Prepare the schema, open clients, start the loops; close everything on exit.

        What runs in the background is `work`'s: at once, or with `worker` (a worker of `serve --workers`) once this
        process holds the poller lease, so that one worker of the host does it, not each of them.
        """
        engine = await db.prepare(settings)
        aws = Aws(metrics=Metrics(), freshness=Freshness())
        runtime = cls.build(settings, engine=engine, aws=aws)
        runtime.worker = worker
        try:
            if worker is None:
                runtime.work(poll=poll, recheck=recheck, subscriptions=subscriptions)
            else:
                runtime.run(runtime.election(poll=poll, recheck=recheck, subscriptions=subscriptions))
            # Every process derives builds: API replicas write transitions too (live look-ups).
            runtime.run(runtime.builds.loop())
            for coroutine in background or ():
                runtime.start(coroutine, name="background")
            yield runtime
        finally:
            await runtime.close()

    def work(self, *, poll: bool, recheck: bool, subscriptions: SubscriptionsFile | None) -> None:
        """Start the background work: with `poll`, the reconciler, the event consumer, retention and evidence capture;
        with `recheck`, the rechecks (looks at AWS still owed), which every serving process takes (an API replica's own
        live lookups can leave one owed; of `serve --workers`, the elected worker takes the others' too, from the
        table); the deliverers of `subscriptions`."""
        if poll:
            self.run(self.reconciler.loop(region_gate=self.lease.holds))
            # Each receiver finishes the batch in hand before the process exits.
            for receiver in self.consumer.receivers(stop=self.stop):
                self.run(receiver, drains=True)
            self.run(self.retention.loop())
            self.run(self.evidence.loop(region_gate=self.lease.holds))
        if recheck:
            self.run(self.rechecker.loop())
        if subscriptions is not None:
            self.notify(subscriptions)
        self.polling = poll

    def election(self, *, poll: bool, recheck: bool, subscriptions: SubscriptionsFile | None) -> Loop:
        """Ask for the poller lease until this worker holds it, then start `work`: one worker of the host does what
        a single process does in the background, by the lease replicas use (an advisory lock on PostgreSQL, a lock
        file on SQLite). When its holder dies, the next worker to ask takes the work over.

        The lease is named after the host: the workers of one `serve --workers` share it, and so would two on one host
        sharing a database; other hosts elect their own (their reconcile and delivery leases still divide the work).
        Once elected, a worker keeps the work until it stops. If its lease was lost meanwhile (its connection broke
        in a database outage) and another worker took it, both do the work until one stops, which is safe, as two
        replicas polling are; that is logged.
        """
        leases = self.poller_lease = Leases(self.engine, namespace="poller", held=self.metrics.poller_lease)
        host = socket.gethostname()
        elected = lost = False

        async def step() -> float:
            nonlocal elected, lost
            held = await leases.holds(host)
            if held and not elected and not self.stop.is_set():
                elected = True
                log.info("this worker holds the poller lease of %s: it does the background work", host)
                self.work(poll=poll, recheck=recheck, subscriptions=subscriptions)
            elif elected and held == lost:
                lost = not held
                if lost:
                    log.warning("this worker lost the poller lease of %s: it does the background work until it stops, "
                                "and so may the worker that holds it now", host)  # fmt: skip
                else:
                    log.info("this worker holds the poller lease of %s again", host)
            return ELECTION_SECONDS

        return Loop(
            name="poller election",
            step=step,
            backoff=Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds),
            quiet=(DatabaseUnavailable,),
            detail=f"one worker of {host} does the background work; the others ask every {ELECTION_SECONDS:g}s",
        )

    def run(self, loop: Loop, *, drains: bool = False) -> None:
        """Run `loop` until shutdown (`stop`); with `drains`, close lets its step in hand finish."""
        self.start(loop.run(stop=self.stop), name=loop.name, drains=drains)

    def notify(self, subscriptions: SubscriptionsFile) -> Notifier:
        """Start delivering the subscriptions of `subscriptions` (and of each version SIGHUP loads)."""
        self.notifier = Notifier(
            subscriptions, writer=self.cache.writer, aws=self.aws, metrics=self.metrics, settings=self.settings,
            start=lambda coroutine, name: self.start(coroutine, name=name, drains=True),
            wake=lambda seconds: self.transitioned.wait(seconds=seconds),
        )  # fmt: skip
        self.notifier.start()
        return self.notifier

    def start(self, coroutine: Coroutine[Any, Any, None], *, name: str, drains: bool = False) -> None:
        """Run a coroutine until close; with `drains`, close lets it finish its work in hand (it watches `stop`)."""
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
        if self.notifier is not None:
            self.notifier.stopping()
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
        if self.polling and self.settings.events_queue_urls:
            self.consumer.stopped()
        if self.notifier is not None:
            await self.notifier.close()
        await self.lease.release_all()
        if self.poller_lease is not None:
            await self.poller_lease.release_all()
        await self.outage.close()
        await self.aws.close()
        self.cache.close()
        await self.engine.dispose()


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s crashed", task.get_name(), exc_info=task.exception())
