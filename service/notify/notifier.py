"""The subscriptions in force and their deliverers: one per subscription, replaced when SIGHUP brings a new file;
what GET /v3/subscriptions shows, and replays."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any

import aiohttp

from service.aws import Aws
from service.domain.deliveries import Retries
from service.domain.subscriptions import Sns, Subscription, Subscriptions, Webhook
from service.errors import DatabaseUnavailable
from service.metrics import Metrics
from service.notify.config import SubscriptionsFile
from service.notify.deliverer import Deliverer
from service.notify.feed import Feed
from service.notify.sinks import Sink, SnsSink, SsmParameterSink, WebhookSink
from service.settings import Settings
from service.store import subscriptions as store
from service.store.lease import Leases
from service.store.writer import Writer
from service.support.clock import utcnow
from service.support.loops import Backoff, Loop

log = logging.getLogger(__name__)

# Starts a coroutine for the life of the process (Runtime.start), under a name; shutting down waits for it to end.
Starter = Callable[[Coroutine[Any, Any, None], str], None]
# Returns at the next change this process writes, or after `seconds` (None: no bound).
Wake = Callable[[float | None], Awaitable[None]]


class Notifier:
    def __init__(
        self, file: SubscriptionsFile, *, writer: Writer, aws: Aws, metrics: Metrics, settings: Settings,
        start: Starter, wake: Wake,
    ) -> None:  # fmt: skip
        self.file = file
        self._writer = writer
        # Reads stay on the engine; every write goes through the writer.
        self._engine = writer.engine
        self._aws = aws
        self._metrics = metrics
        self._settings = settings
        self._start = start
        self._wake = wake
        self.leases = Leases(self._engine, namespace="notify")
        self.feed = Feed(self._engine)
        self.cursors = store.Cursors(writer)
        self.retries = Retries(
            initial=settings.notify_retry_initial_seconds, maximum=settings.notify_retry_max_seconds,
            give_up=settings.notify_give_up_seconds,
        )  # fmt: skip
        # One HTTP client per webhook subscription: each delivers one request at a time, and one pool shared by a
        # hundred of them spends its time in the pool's bookkeeping (measured: about 6 ms per request).
        self._clients: set[aiohttp.ClientSession] = set()
        self.deliverers: dict[str, Deliverer] = {}
        self._running: dict[str, Subscription] = {}
        # Set to run a deliverer's next step now (a replay).
        self._nudges: dict[str, asyncio.Event] = {}
        self._closed = False
        file.on_change(self.apply)

    def start(self) -> None:
        self.apply(self.file.current)

    def sink(self, subscription: Subscription, *, http: aiohttp.ClientSession | None = None) -> Sink:
        timeout = self._settings.notify_timeout_seconds
        if isinstance(subscription, Webhook):
            assert http is not None
            return WebhookSink(subscription, http=http, timeout=timeout)
        if isinstance(subscription, Sns):
            return SnsSink(subscription, aws=self._aws, timeout=timeout)
        return SsmParameterSink(subscription, aws=self._aws, engine=self._engine, timeout=timeout)

    def apply(self, found: Subscriptions) -> None:
        """Run a deliverer for each subscription of `found`: new ones start, removed ones stop, changed ones
        (another URL, secret, topic, parameter or filter) restart with their cursor where it was."""
        if self._closed:
            return
        for name in list(self._running):
            fresh = found.by_name.get(name)
            if fresh is None or not _same(fresh, self._running[name]):
                self._stop(name)
        for subscription in found:
            if subscription.name not in self._running:
                self._launch(subscription)

    def _launch(self, subscription: Subscription) -> None:
        http = None
        if isinstance(subscription, Webhook):
            http = WebhookSink.session(timeout=self._settings.notify_timeout_seconds)
            self._clients.add(http)
        deliverer = Deliverer(
            subscription, sink=self.sink(subscription, http=http), writer=self._writer, cursors=self.cursors,
            feed=self.feed, leases=self.leases, retries=self.retries, poll_seconds=self._settings.notify_poll_seconds,
            metrics=self._metrics,
        )  # fmt: skip
        nudge = asyncio.Event()
        self.deliverers[subscription.name] = deliverer
        self._nudges[subscription.name] = nudge
        self._running[subscription.name] = subscription
        self._start(self._run(deliverer, self.loop(deliverer, nudge), http), f"deliverer {subscription.name}")

    def stopping(self) -> None:
        """The process shuts down: every deliverer finishes the delivery in hand, writes its cursor and stops (the
        runtime waits for them within its shutdown bound); `close` then gives the leases up."""
        self._closed = True
        for deliverer in self.deliverers.values():
            deliverer.stopping.set()

    def _stop(self, name: str) -> None:
        self.deliverers.pop(name).stopping.set()
        self._nudges.pop(name).set()
        self._running.pop(name)
        self._metrics.notify_lag.pop(name, None)
        self._metrics.notify_lease.discard(name)

    def loop(self, deliverer: Deliverer, nudge: asyncio.Event) -> Loop:
        """One deliverer's steps under the loops' supervisor: woken by this process's next change or a replay."""

        async def news() -> None:
            try:
                await _first(nudge.wait(), self._wake(None))
            finally:
                nudge.clear()

        subscription = deliverer.subscription
        return Loop(
            name=f"deliverer {deliverer.name}",
            step=deliverer.step,
            backoff=Backoff(self._settings.backoff_initial_seconds, self._settings.backoff_max_seconds),
            quiet=(DatabaseUnavailable,),
            wake=news,
            detail=f"{subscription.kind} {subscription.target}",
        )

    async def _run(self, deliverer: Deliverer, loop: Loop, http: aiohttp.ClientSession | None) -> None:
        """The deliverer's loop until it is stopped; then its lease and HTTP client go."""
        try:
            await loop.run(stop=deliverer.stopping)
        finally:
            if deliverer.stopping.is_set():
                await self.leases.release(deliverer.name)
            if http is not None:
                self._clients.discard(http)
                await http.close()

    async def close(self) -> None:
        self._closed = True
        for name in list(self._running):
            self._stop(name)
        await self.leases.release_all()
        for http in list(self._clients):
            await http.close()
        self._clients.clear()

    async def health(self, *, now: datetime | None = None) -> list[dict[str, Any]]:
        """Each subscription in force: its sink, cursor, lag, last error, dead letters, whether it is disabled.
        Never a secret (a webhook shows its URL without the query)."""
        now = now or utcnow()
        rows = await store.health(self._engine)
        found: list[dict[str, Any]] = []
        for subscription in self.file.current:
            row = rows.get(subscription.name)
            item: dict[str, Any] = {"name": subscription.name, "kind": subscription.kind, "target": subscription.target}
            if row is None:
                item.update({"cursor": None, "lagSeconds": 0.0, "deadLetters": 0, "disabled": False})
            else:
                state = row.state
                pending = row.oldest_pending_at
                item.update({
                    "cursor": state.delivered_seq,
                    "lagSeconds": round(max(0.0, (now - pending).total_seconds()), 3) if pending else 0.0,
                    "deadLetters": row.dead_letters,
                    "disabled": state.disabled_at is not None,
                    "attempts": state.attempts,
                })  # fmt: skip
                for key, value in (
                    ("disabledReason", state.disabled_reason), ("lastError", state.last_error),
                    ("lastErrorTime", _iso(state.last_error_at)), ("nextAttemptTime", _iso(state.next_attempt_at)),
                    ("lastDeliveryTime", _iso(state.delivered_at)),
                ):  # fmt: skip
                    if value is not None:
                        item[key] = value
            found.append(item)
        return found

    async def replay(self, name: str, *, since_seq: int | None, since_time: datetime | None) -> int | None:
        """Send again from a change sequence or a moment; the new cursor, or None for an unknown subscription."""
        if name not in self.file.current.by_name:
            return None
        now = utcnow()
        await store.ensure(self._writer, name=name, kind=self.file.current.by_name[name].kind, now=now)
        cursor = await store.replay(self._writer, name=name, since_seq=since_seq, since_time=since_time, now=now)
        log.info("subscription %s replays from change %s", name, None if cursor is None else cursor + 1)
        deliverer, nudge = self.deliverers.get(name), self._nudges.get(name)
        if deliverer is not None:
            deliverer.forget()
        if nudge is not None:
            nudge.set()
        return cursor


def _same(one: Subscription, other: Subscription) -> bool:
    if isinstance(one, Webhook) and isinstance(other, Webhook):
        return one == other and one.secret == other.secret
    return one == other


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _first(*waits: Awaitable[object]) -> None:
    """Until the first of `waits` returns."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
