"""Applying changes: the one idempotent `apply` every writer goes through, in batches, each one transaction.

A batch locks its images, reads them, decides every change in memory (service.domain.rows) against the
row as the batch left it, and writes images, revisions, transitions and the rechecks they leave owed
together. Listeners hear about every committed batch of results.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from service.domain import rechecks as domain_rechecks
from service.domain import rows
from service.domain.models import Change
from service.domain.rechecks import Recheck
from service.domain.rows import ApplyResult
from service.store import builds, poison, processed
from service.store.poison import Poison
from service.store.rechecks import held_news, read_rechecks, write_rechecks
from service.store.tables import images, revisions, transitions
from service.store.writer import Writer, upsert
from service.support.clock import utcnow

BATCH_SIZE = 200
# On PostgreSQL a batch is merged on the event loop (SQLite merges on its writer thread): smaller
# batches keep a reconcile pass from holding up reads for long.
LOOP_BATCH_SIZE = 50
# The advisory lock key of the revision order (see _Writes.write): a bigint outside int4, so it can never be
# one of the per-image keys (hashtext gives an int4).
REVISION_ORDER_LOCK = 0x5354_4154_5553_0001
# When the image was first stored: what a later write of its row leaves as it is.
KEPT_ON_UPDATE = frozenset({"created_at"})

Listener = Callable[[Sequence[ApplyResult]], None]


@dataclass(frozen=True)
class _Extra:
    """What the last transaction of an apply writes besides the changes."""

    event_ids: Sequence[str] = ()
    poison: Sequence[Poison] = ()
    owed: Sequence[Recheck] = ()
    settled: Sequence[tuple[Recheck, datetime]] = ()
    # Events' news about images whose look got no answer (service.domain.rechecks), kept with `owed`.
    news: Sequence[Change] = ()


class Changes:
    """Applies changes through `writer`. `retry_seconds` is how long after a look fails (or a recheck is
    owed) it is first tried again."""

    def __init__(self, writer: Writer, *, retry_seconds: float) -> None:
        self._writer = writer
        self.retry_seconds = retry_seconds
        self._listeners: list[Listener] = []
        # Called (on the event loop) after a commit that left a recheck owed: the rechecker's wake-up.
        self.on_recheck_owed: Callable[[], None] | None = None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def apply_many(
        self,
        changes: Sequence[Change],
        *,
        event_ids: Sequence[str] = (),
        poison: Sequence[Poison] = (),
        owed: Sequence[Recheck] = (),
        settled: Sequence[tuple[Recheck, datetime]] = (),
        news: Sequence[Change] = (),
    ) -> list[ApplyResult]:
        """Apply changes in order, in batches, each batch one transaction (retried on lock conflicts).

        `event_ids` are recorded as processed, `poison` messages stored, `owed` rechecks (that no change
        carries: an event's failed targeted refresh) recorded and `settled` rechecks (a look begun at the time
        given that found nothing to store) removed in the last batch's transaction: if anything before fails, a
        redelivered event is not mistaken for a duplicate. The rechecks the changes themselves leave owed, or
        settle, are written with them (service.domain.rechecks).

        `news` (events' news about images their owed rechecks are about) is merged at once into an image that
        is stored by then, else kept with the recheck; any batch that stores an image merges the news kept for
        it. The results of those merges follow their batch's (listeners hear them like any other).
        """
        results: list[ApplyResult] = []
        size = BATCH_SIZE if self._writer.threaded else LOOP_BATCH_SIZE
        starts = list(range(0, len(changes), size)) or [0]
        for start in starts:
            batch = changes[start : start + size]
            extra = _Extra(event_ids, poison, owed, settled, news) if start == starts[-1] else _Extra()
            batch_results = await self._writer.write(
                functools.partial(_write_batch, batch=batch, extra=extra, retry_seconds=self.retry_seconds)
            )
            results.extend(batch_results)
            for listener in self._listeners:
                listener(batch_results)
            if self.on_recheck_owed is not None and (extra.owed or any(change.unknown for change in batch)):
                self.on_recheck_owed()
        return results


def _write_batch(
    connection: Connection, *, batch: Sequence[Change], extra: _Extra, retry_seconds: float
) -> list[ApplyResult]:
    """One batch, inside the caller's transaction: lock, read, merge in memory, write."""
    keys = sorted({(change.region, change.image_id) for change in (*batch, *extra.news)})
    stored = {}
    if keys:
        if connection.dialect.name == "postgresql":
            # Per-image advisory locks, taken in one sorted statement, so replicas applying changes to
            # the same image serialize instead of overwriting each other's merge.
            connection.execute(
                text(
                    "SELECT pg_advisory_xact_lock(hashtext(k)) FROM unnest(CAST(:keys AS text[])) AS k "
                    "ORDER BY hashtext(k)"
                ),
                {"keys": [f"{region}/{image_id}" for region, image_id in keys]},
            )
        # Per region, `image_id IN (...)`: SQLite answers a row-value IN by scanning the whole table.
        stored = {
            (row.region, row.image_id): row
            for region in sorted({region for region, _ in keys})
            for row in connection.execute(
                select(images).where(
                    images.c.region == region, images.c.image_id.in_([i for r, i in keys if r == region])
                )
            )
        }
    planned = _Writes(stored)
    for change in batch:
        planned.add(change)
    # Events' news about these images: merged into those stored by now (after the batch's own changes,
    # by the one rule for "newer"), kept for the others.
    recheck_rows = read_rechecks(connection, batch, owed=extra.owed, settled=extra.settled, images=keys)
    waiting = held_news(recheck_rows)
    for change in extra.news:
        key = (change.region, change.image_id)
        waiting[key] = domain_rechecks.combined_news(waiting.get(key), change)
    kept: dict[tuple[str, str], Change | None] = {}
    for key, change in waiting.items():
        if any(
            (looked.region, looked.image_id) == key and domain_rechecks.supersedes(looked, change) for looked in batch
        ):
            kept[key] = None
        elif key in planned.state:
            planned.add(change)
            kept[key] = None
        else:
            kept[key] = change
    results = planned.write(connection)
    now = utcnow()
    write_rechecks(
        connection, batch, state=recheck_rows, owed=extra.owed, settled=extra.settled, news=kept, now=now,
        retry_seconds=retry_seconds,
    )
    processed.record(connection, extra.event_ids, now=now)
    poison.keep(connection, extra.poison, now=now)
    return results


class _Writes:
    """The writes for one batch: each change decided (service.domain.rows) against the row as the batch left it."""

    def __init__(self, stored: dict[tuple[str, str], Any]) -> None:
        self.state: dict[tuple[str, str], dict[str, Any]] = {key: dict(row._mapping) for key, row in stored.items()}
        self.image_rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.revision_rows: list[dict[str, Any]] = []
        self.transition_rows: list[dict[str, Any]] = []
        self.results: list[ApplyResult] = []

    def add(self, change: Change) -> None:
        key = (change.region, change.image_id)
        written = rows.apply(self.state.get(key), change)
        self.results.append(written.result)
        if written.image is None:
            return
        self.state[key] = self.image_rows[key] = written.image
        if written.revision is not None:
            self.revision_rows.append(written.revision)
        if written.transition is not None:
            self.transition_rows.append(written.transition)

    def write(self, connection: Connection) -> list[ApplyResult]:
        seqs: dict[tuple[str, str, int], int] = {}
        if self.revision_rows:
            if connection.dialect.name == "postgresql":
                # Sequence numbers are the change stream's order, so they must become visible in order. A
                # serial column alone does not do that: a transaction that drew a lower number can commit
                # after one that drew a higher one, and a reader already past the higher one would never
                # send the lower. Held from the first number drawn until commit, this lock makes commit
                # order the sequence order. (SQLite has one writer at a time already.)
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REVISION_ORDER_LOCK})
            inserted = connection.execute(
                revisions.insert().returning(
                    revisions.c.seq, revisions.c.region, revisions.c.image_id, revisions.c.version,
                    sort_by_parameter_order=True,
                ),
                self.revision_rows,
            )
            for seq, region, image_id, version in inserted:
                seqs[(region, image_id, version)] = seq
                key = (region, image_id)
                if self.image_rows[key]["version"] == version:
                    self.image_rows[key]["seq"] = seq
        if self.image_rows:
            connection.execute(
                upsert(images, dialect=connection.dialect.name, keep=KEPT_ON_UPDATE),
                list(self.image_rows.values()),
            )
        if self.transition_rows:
            connection.execute(transitions.insert(), self.transition_rows)
            # Builds come from the transitions: marked here, derived shortly after (builds.derive_marked).
            builds.mark(connection, {(row["region"], row["image_id"]) for row in self.transition_rows})
        return [
            ApplyResult(
                result.region, result.image_id, result.stored, result.changed, result.transitioned,
                result.exists, result.version,
                seqs.get((result.region, result.image_id, result.version)) if result.changed else None,
            )
            for result in self.results
        ]
