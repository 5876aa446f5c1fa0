"""The SQL cache: one-lookup reads, and the one idempotent `apply` every writer goes through."""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, func, literal_column, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import records, refreshes, rows
from service.domain.models import CachedImage, Change, ConfigLocation
from service.domain.refreshes import KIND_IMAGE, Need
from service.domain.rows import ApplyResult
from service.store import builds, db
from service.store.db import sqlite_direct_for
from service.store.tables import images, poison_messages, processed_events, revisions, transitions
from service.store.tables import refreshes as refresh_table
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
# The image's owed look, if any (the kind is inlined, so the direct reader's parameters stay region, image_id).
IMAGE_NEED = and_(
    refresh_table.c.region == images.c.region,
    refresh_table.c.kind == literal_column(f"'{KIND_IMAGE}'"),
    refresh_table.c.subject == images.c.image_id,
)
# A served record, and whether a look at it is owed (the owed look's subject, NULL when none).
READ = (
    select(*READ_COLUMNS, refresh_table.c.subject)
    .select_from(images.outerjoin(refresh_table, IMAGE_NEED))
    .where(images.c.region == bindparam("region"), images.c.image_id == bindparam("image_id"))
)
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
    # A look at the image is owed (a part AWS did not answer for, an event's failed refresh).
    pending: bool = False


Listener = Callable[[Sequence[ApplyResult]], None]
T = TypeVar("T")


def stored_image(*, region: str, image_id: str, columns: Sequence[Any]) -> CachedImage:
    """A record (or a revision) as served, from the values of READ_COLUMNS (or REVISION_READ_COLUMNS), in order,
    then (READ only) the owed look's subject.

    Times may be SQLite's text (the direct reader) or datetimes (the engine): both are UTC.
    """
    version, exists, document, bucket, key, available, changed_at, confirmed_at = columns[:8]
    return CachedImage(
        region=region,
        image_id=image_id,
        version=version,
        exists=bool(exists),
        document=document.encode() if document is not None else None,
        config=ConfigLocation(bucket=bucket, key=key, available=bool(available)),
        changed_at=as_utc(changed_at),
        confirmed_at=as_utc(confirmed_at),
        pending=len(columns) > 8 and columns[8] is not None,
    )


class Cache:
    """Reads and writes image records. Listeners hear about every committed batch of results.

    A database that cannot answer surfaces from its methods as DatabaseUnavailable (service.store.db.unavailable).
    `retry_seconds` is how long after a look fails (or is owed) it is first tried again.
    """

    def __init__(self, engine: AsyncEngine, *, retry_seconds: float = 1.0) -> None:
        self.engine = engine
        self.retry_seconds = retry_seconds
        self._listeners: list[Listener] = []
        # Called (on the event loop) after a commit that left a look owed: the healer's wake-up.
        self.on_owed: Callable[[], None] | None = None
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
        """The record as served; raises DatabaseUnavailable when the database cannot answer."""
        answered, record = self.read_now(region=region, image_id=image_id)
        if answered:
            return record
        async with db.translated(), self.engine.connect() as connection:
            row = (await connection.execute(READ, {"region": region, "image_id": image_id})).first()
        return stored_image(region=region, image_id=image_id, columns=row) if row is not None else None

    async def known(self, *, region: str) -> dict[str, Known]:
        async with db.translated(), self.engine.connect() as connection:
            rows = await connection.execute(
                select(
                    images.c.image_id,
                    images.c.exists,
                    images.c.stack_id,
                    images.c.stack_status,
                    images.c.imagebuilder_as_of,
                    refresh_table.c.subject,
                )
                .select_from(images.outerjoin(refresh_table, IMAGE_NEED))
                .where(images.c.region == region)
            )
            return {
                row.image_id: Known(
                    exists=bool(row.exists),
                    stack_id=row.stack_id,
                    stack_status=row.stack_status,
                    imagebuilder_fetched=row.imagebuilder_as_of is not None,
                    pending=row.subject is not None,
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
        needs: Sequence[Need] = (),
        settled: Sequence[tuple[Need, datetime]] = (),
    ) -> list[ApplyResult]:
        """Apply changes in order, in batches, each batch one transaction; retried on lock conflicts.

        `event_ids` are recorded as processed, `poison` messages stored, `needs` (looks owed that no change
        carries: an event's failed refresh) recorded and `settled` needs (a look begun at the time given that
        found nothing to store) removed in the last batch's transaction: if anything before fails, a
        redelivered event is not mistaken for a duplicate. The looks the changes themselves leave owed, or
        settle, are written with them (service.domain.refreshes).
        """
        results: list[ApplyResult] = []
        size = BATCH_SIZE if self._sqlite is not None else LOOP_BATCH_SIZE
        starts = list(range(0, len(changes), size)) or [0]
        for start in starts:
            batch = changes[start : start + size]
            last = start == starts[-1]
            extra = _Extra(event_ids, poison, needs, settled) if last else _Extra()
            for attempt in range(WRITE_ATTEMPTS):
                try:
                    batch_results = await self._apply_batch(batch, extra)
                    break
                except DBAPIError as exc:
                    if attempt == WRITE_ATTEMPTS - 1 or not is_retryable(exc):
                        _raise_unavailable(exc)
                        raise
                    log.warning("apply: retrying after %s", type(exc.orig).__name__ if exc.orig else exc)
                    await asyncio.sleep(0.05 * 2**attempt)
                except Exception as exc:
                    _raise_unavailable(exc)
                    raise
            results.extend(batch_results)
            for listener in self._listeners:
                listener(batch_results)
            if self.on_owed is not None and (extra.needs or any(change.unknown for change in batch)):
                self.on_owed()
        return results

    async def _apply_batch(self, batch: Sequence[Change], extra: _Extra) -> list[ApplyResult]:
        retry_seconds = self.retry_seconds
        if self._sqlite is not None:
            # One hop to the writer thread for the whole transaction, instead of one per statement.
            return await asyncio.get_running_loop().run_in_executor(
                self._sqlite.writer, self._sqlite.write, lambda connection: _write_batch(
                    connection, batch, extra, retry_seconds=retry_seconds
                )
            )
        async with self.engine.connect() as connection:
            return await connection.run_sync(_write_in_transaction, batch, extra, retry_seconds)

    async def derive_builds(self) -> int:
        """Derive the builds of every image marked since the last call (service.store.builds); returns how many."""
        total = 0
        async with db.translated():
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
        async with db.translated(), self.engine.connect() as connection:
            found = await connection.execute(
                select(processed_events.c.event_id).where(processed_events.c.event_id.in_(list(event_ids)))
            )
            return {row.event_id for row in found}

    async def read_parts(self, *, region: str, image_id: str) -> records.Parts | None:
        async with db.translated(), self.engine.connect() as connection:
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
        async with db.translated(), self.engine.connect() as connection:
            return (
                await connection.execute(
                    select(images.c.image_id).where(images.c.region == region, condition).limit(1)
                )
            ).scalar_one_or_none()

    async def image_by_lower_id(self, *, region: str, lower_id: str) -> str | None:
        async with db.translated(), self.engine.connect() as connection:
            return (
                await connection.execute(
                    select(images.c.image_id)
                    .where(images.c.region == region, func.lower(images.c.image_id) == lower_id)
                    .limit(1)
                )
            ).scalar_one_or_none()


def _raise_unavailable(exc: BaseException) -> None:
    """Raise DatabaseUnavailable from `exc` when that is what it means; else return (the caller re-raises)."""
    translated = db.unavailable(exc)
    if translated is not None and translated is not exc:
        raise translated from exc


@dataclass(frozen=True)
class _Extra:
    """What the last transaction of an apply writes besides the changes."""

    event_ids: Sequence[str] = ()
    poison: Sequence[Poison] = ()
    needs: Sequence[Need] = ()
    settled: Sequence[tuple[Need, datetime]] = ()


def _in_transaction(connection: Connection, work: Callable[[Connection], T]) -> T:
    with connection.begin():
        return work(connection)


def _write_in_transaction(
    connection: Connection, batch: Sequence[Change], extra: _Extra, retry_seconds: float
) -> list[ApplyResult]:
    with connection.begin():
        return _write_batch(connection, batch, extra, retry_seconds=retry_seconds)


def _write_batch(
    connection: Connection, batch: Sequence[Change], extra: _Extra, *, retry_seconds: float
) -> list[ApplyResult]:
    """One batch, inside the caller's transaction: lock, read, merge in memory, write."""
    dialect = connection.dialect.name
    event_ids, poison = extra.event_ids, extra.poison
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
    _write_needs(connection, batch, extra, now=now, retry_seconds=retry_seconds)
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


# The advisory lock key of the revision order (see _Writes.write): a bigint outside int4, so it can never be
# one of the per-image keys (hashtext gives an int4).
REVISION_ORDER_LOCK = 0x5354_4154_5553_0001

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


def _write_needs(
    connection: Connection, batch: Sequence[Change], extra: _Extra, *, now: datetime, retry_seconds: float
) -> None:
    """The looks owed after this batch: each change's (service.domain.refreshes), then the explicit ones.

    Runs after the images are locked (PostgreSQL advisory locks above), so two replicas settling and
    renewing the same image's need serialize like their image writes do.
    """
    keys = {(change.region, KIND_IMAGE, change.image_id) for change in batch}
    keys |= {need.key for need in extra.needs} | {need.key for need, _ in extra.settled}
    if not keys:
        return
    table = refresh_table
    state: dict[tuple[str, str, str], dict[str, Any] | None] = dict.fromkeys(keys)
    for row in connection.execute(
        select(table).where(tuple_(table.c.region, table.c.kind, table.c.subject).in_(sorted(keys)))
    ):
        state[(row.region, row.kind, row.subject)] = dict(row._mapping)
    before = {key: row for key, row in state.items() if row is not None}
    first_try_at = now + timedelta(seconds=retry_seconds)

    def owe(need: Need) -> None:
        state[need.key] = refreshes.row_after(state[need.key], need, first_try_at=first_try_at)

    for change in batch:
        key = (change.region, KIND_IMAGE, change.image_id)
        need = refreshes.need_for(change)
        if need is not None:
            owe(need)
        elif refreshes.settles(state[key], change):
            state[key] = None
    for need in extra.needs:
        owe(need)
    for need, looked_at in extra.settled:
        if refreshes.settled_by_time(state[need.key], looked_at):
            state[need.key] = None

    gone = [key for key in before if state[key] is None]
    if gone:
        connection.execute(
            table.delete().where(tuple_(table.c.region, table.c.kind, table.c.subject).in_(gone))
        )
    kept = [row for key, row in state.items() if row is not None and row != before.get(key)]
    if kept:
        connection.execute(_upsert_need(connection.dialect.name), kept)


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
def _upsert_need(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(refresh_table)
    updated = {
        column.name: statement.excluded[column.name]
        for column in refresh_table.columns
        if column.name not in {"region", "kind", "subject"}
    }
    return statement.on_conflict_do_update(index_elements=["region", "kind", "subject"], set_=updated)


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
