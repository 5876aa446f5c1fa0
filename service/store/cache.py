"""The SQL cache: one-lookup reads, and the one idempotent `apply` every writer goes through."""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import records, rows
from service.domain.models import CachedImage, Change, ConfigLocation
from service.domain.rows import ApplyResult
from service.store import builds
from service.store.db import sqlite_direct_for
from service.store.tables import images, poison_messages, processed_events, revisions, transitions
from service.support.clock import as_utc, utcnow

log = logging.getLogger(__name__)

BATCH_SIZE = 200
# On PostgreSQL a batch is merged on the event loop (SQLite merges on its writer thread): smaller
# batches keep a reconcile pass from holding up reads for long.
LOOP_BATCH_SIZE = 50
WRITE_ATTEMPTS = 4

# What a served record is made of, in the order `stored_image` takes it.
READ_COLUMNS = (
    images.c.version,
    images.c.exists,
    images.c.document,
    images.c.config_bucket,
    images.c.config_key,
    images.c.config_available,
    images.c.changed_at,
    images.c.confirmed_at,
)
# A revision is served as the record was at that version: when it was observed is both when it
# changed and when it was last confirmed.
REVISION_READ_COLUMNS = tuple(
    revisions.c.observed_at.label(column.name) if column.name in {"changed_at", "confirmed_at"}
    else revisions.c[column.name]
    for column in READ_COLUMNS
)
READ = select(*READ_COLUMNS).where(images.c.region == bindparam("region"), images.c.image_id == bindparam("image_id"))
# The same statement as text, for the direct SQLite reader (parameters: region, image_id).
SQLITE_READ = str(READ.compile(dialect=sqlite.dialect()))


@dataclass(frozen=True)
class Poison:
    """An SQS message that could not be read, kept with the reason."""

    queue_url: str
    message_id: str
    body: str
    reason: str


@dataclass(frozen=True)
class Known:
    """What reconciliation needs to know about a stored image."""

    exists: bool
    stack_id: str | None
    stack_status: str | None
    imagebuilder_fetched: bool


Listener = Callable[[Sequence[ApplyResult]], None]
T = TypeVar("T")


def stored_image(*, region: str, image_id: str, columns: Sequence[Any]) -> CachedImage:
    """A record (or a revision) as served, from the values of READ_COLUMNS (or REVISION_READ_COLUMNS), in order.

    Times may be SQLite's text (the direct reader) or datetimes (the engine): both are UTC.
    """
    version, exists, document, bucket, key, available, changed_at, confirmed_at = columns
    return CachedImage(
        region=region,
        image_id=image_id,
        version=version,
        exists=bool(exists),
        document=document.encode() if document is not None else None,
        config=ConfigLocation(bucket=bucket, key=key, available=bool(available)),
        changed_at=as_utc(changed_at),
        confirmed_at=as_utc(confirmed_at),
    )


class Cache:
    """Reads and writes image records. Listeners hear about every committed batch of results."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._listeners: list[Listener] = []
        self._sqlite = sqlite_direct_for(engine)

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def read_now(self, *, region: str, image_id: str) -> tuple[bool, CachedImage | None]:
        """(answered, record): a read without awaiting, where the database allows one (SQLite)."""
        if self._sqlite is None:
            return False, None
        try:
            direct = self._sqlite.read_one(SQLITE_READ, (region, image_id))
        except sqlite3.OperationalError as exc:
            log.debug("direct SQLite read failed (%s); reading through the engine", exc)
            return False, None
        if direct is None:
            return True, None
        return True, stored_image(region=region, image_id=image_id, columns=direct)

    async def read(self, *, region: str, image_id: str) -> CachedImage | None:
        answered, record = self.read_now(region=region, image_id=image_id)
        if answered:
            return record
        async with self.engine.connect() as connection:
            row = (await connection.execute(READ, {"region": region, "image_id": image_id})).first()
        return stored_image(region=region, image_id=image_id, columns=row) if row is not None else None

    async def known(self, *, region: str) -> dict[str, Known]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(
                    images.c.image_id,
                    images.c.exists,
                    images.c.stack_id,
                    images.c.stack_status,
                    images.c.imagebuilder_as_of,
                ).where(images.c.region == region)
            )
            return {
                row.image_id: Known(
                    exists=bool(row.exists),
                    stack_id=row.stack_id,
                    stack_status=row.stack_status,
                    imagebuilder_fetched=row.imagebuilder_as_of is not None,
                )
                for row in rows
            }

    async def apply(self, change: Change) -> ApplyResult:
        return (await self.apply_many([change]))[0]

    async def apply_many(
        self,
        changes: Sequence[Change],
        *,
        event_ids: Sequence[str] = (),
        poison: Sequence[Poison] = (),
    ) -> list[ApplyResult]:
        """Apply changes in order, in batches, each batch one transaction; retried on lock conflicts.

        `event_ids` are recorded as processed, and `poison` messages stored, in the last batch's
        transaction: if anything before fails, a redelivered event is not mistaken for a duplicate.
        """
        results: list[ApplyResult] = []
        size = BATCH_SIZE if self._sqlite is not None else LOOP_BATCH_SIZE
        starts = list(range(0, len(changes), size)) or [0]
        for start in starts:
            batch = changes[start : start + size]
            last = start == starts[-1]
            for attempt in range(WRITE_ATTEMPTS):
                try:
                    batch_results = await self._apply_batch(
                        batch, event_ids=event_ids if last else (), poison=poison if last else ()
                    )
                    break
                except DBAPIError as exc:
                    if attempt == WRITE_ATTEMPTS - 1 or not is_retryable(exc):
                        raise
                    log.warning("apply: retrying after %s", type(exc.orig).__name__ if exc.orig else exc)
                    await asyncio.sleep(0.05 * 2**attempt)
            results.extend(batch_results)
            for listener in self._listeners:
                listener(batch_results)
        return results

    async def _apply_batch(
        self, batch: Sequence[Change], *, event_ids: Sequence[str], poison: Sequence[Poison]
    ) -> list[ApplyResult]:
        if self._sqlite is not None:
            # One hop to the writer thread for the whole transaction, instead of one per statement.
            return await asyncio.get_running_loop().run_in_executor(
                self._sqlite.writer, self._sqlite.write, lambda connection: _write_batch(
                    connection, batch, event_ids=event_ids, poison=poison
                )
            )
        async with self.engine.connect() as connection:
            return await connection.run_sync(
                _write_in_transaction, batch=batch, event_ids=event_ids, poison=poison
            )

    async def derive_builds(self) -> int:
        """Derive the builds of every image marked since the last call (service.store.builds); returns how many."""
        total = 0
        while True:
            for attempt in range(WRITE_ATTEMPTS):
                try:
                    done = await self._write(builds.derive_pending)
                    break
                except DBAPIError as exc:
                    if attempt == WRITE_ATTEMPTS - 1 or not is_retryable(exc):
                        raise
                    await asyncio.sleep(0.05 * 2**attempt)
            total += done
            if done < builds.REWRITE_CHUNK:
                return total

    async def _write(self, work: Callable[[Connection], T]) -> T:
        """One write transaction: on SQLite's writer thread (serialized with apply), else on the engine."""
        if self._sqlite is not None:
            return await asyncio.get_running_loop().run_in_executor(self._sqlite.writer, self._sqlite.write, work)
        async with self.engine.connect() as connection:
            return await connection.run_sync(_in_transaction, work)

    async def seen_events(self, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        async with self.engine.connect() as connection:
            found = await connection.execute(
                select(processed_events.c.event_id).where(processed_events.c.event_id.in_(list(event_ids)))
            )
            return {row.event_id for row in found}

    async def read_parts(self, *, region: str, image_id: str) -> records.Parts | None:
        async with self.engine.connect() as connection:
            text_value = (
                await connection.execute(
                    select(images.c.parts).where(images.c.region == region, images.c.image_id == image_id)
                )
            ).scalar_one_or_none()
        return records.decode_parts(text_value) if text_value is not None else None

    async def image_for(
        self, *, region: str, imagebuilder_arn: str | None = None, ami_id: str | None = None
    ) -> str | None:
        """The image id an Image Builder image or an AMI belongs to, by what the cache already knows."""
        condition = (
            images.c.imagebuilder_arn == imagebuilder_arn if imagebuilder_arn is not None
            else images.c.ami_id == ami_id
        )
        async with self.engine.connect() as connection:
            return (
                await connection.execute(
                    select(images.c.image_id).where(images.c.region == region, condition).limit(1)
                )
            ).scalar_one_or_none()

    async def image_by_lower_id(self, *, region: str, lower_id: str) -> str | None:
        async with self.engine.connect() as connection:
            return (
                await connection.execute(
                    select(images.c.image_id)
                    .where(images.c.region == region, func.lower(images.c.image_id) == lower_id)
                    .limit(1)
                )
            ).scalar_one_or_none()


def _in_transaction(connection: Connection, work: Callable[[Connection], T]) -> T:
    with connection.begin():
        return work(connection)


def _write_in_transaction(
    connection: Connection, *, batch: Sequence[Change], event_ids: Sequence[str], poison: Sequence[Poison]
) -> list[ApplyResult]:
    with connection.begin():
        return _write_batch(connection, batch, event_ids=event_ids, poison=poison)


def _write_batch(
    connection: Connection, batch: Sequence[Change], *, event_ids: Sequence[str], poison: Sequence[Poison]
) -> list[ApplyResult]:
    """One batch, inside the caller's transaction: lock, read, merge in memory, write."""
    dialect = connection.dialect.name
    keys = sorted({(change.region, change.image_id) for change in batch})
    stored = {}
    if keys:
        if dialect == "postgresql":
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
    results = planned.write(connection)
    now = utcnow()
    if event_ids:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        connection.execute(
            insert(processed_events).on_conflict_do_nothing(index_elements=["event_id"]),
            [{"event_id": event_id, "processed_at": now} for event_id in dict.fromkeys(event_ids)],
        )
    if poison:
        connection.execute(
            poison_messages.insert(),
            [
                {
                    "queue_url": item.queue_url,
                    "message_id": item.message_id,
                    "body": item.body,
                    "reason": item.reason,
                    "received_at": now,
                }
                for item in poison
            ],
        )
    return results


# PostgreSQL conditions a retry of the whole transaction can get past: serialization_failure,
# deadlock_detected, unique_violation (two replicas inserting the same new row) and lock_not_available.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23505", "55P03"})
# SQLite: another connection holds the lock (BUSY), or a conflicting use of the same table (LOCKED).
RETRYABLE_SQLITE_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def is_retryable(exc: BaseException) -> bool:
    """Whether a database error is a transient conflict (retry the transaction) rather than a fault.

    Decided by the driver's error code (SQLSTATE, SQLite result code), never by the message text.
    """
    error = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        # Extended result codes (SQLITE_BUSY_SNAPSHOT, ...) carry the primary code in their low byte.
        return code is not None and code & 0xFF in RETRYABLE_SQLITE_CODES
    # asyncpg's errors, and SQLAlchemy's adaptation of them, carry the SQLSTATE.
    return getattr(error, "sqlstate", None) in RETRYABLE_SQLSTATES


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
            connection.execute(_upsert(connection.dialect.name), list(self.image_rows.values()))
        if self.transition_rows:
            connection.execute(transitions.insert(), self.transition_rows)
            # Builds come from the transitions: marked here, derived shortly after (Cache.derive_builds).
            builds.mark(connection, {(row["region"], row["image_id"]) for row in self.transition_rows})
        return [
            ApplyResult(
                result.region, result.image_id, result.stored, result.changed, result.transitioned,
                result.exists, result.version,
                seqs.get((result.region, result.image_id, result.version)) if result.changed else None,
            )
            for result in self.results
        ]


@functools.cache
def _upsert(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(images)
    updated = {
        column.name: statement.excluded[column.name]
        for column in images.columns
        if column.name not in {"region", "image_id", "created_at"}
    }
    return statement.on_conflict_do_update(index_elements=["region", "image_id"], set_=updated)
