"""The subscriptions' delivery state: each one's cursor over the change sequence (transitions.id), its failures,
its dead letters, and the transitions after a cursor as they are told (service.domain.deliveries.Notice).

Every write goes through the one Writer (service.store.writer). On SQLite that is the writer thread: one
transaction at a time per process, each begun IMMEDIATE, so it waits for the write lock (busy_timeout) instead of
failing at once when another connection wrote after it began reading (WAL's busy snapshot), and none holds the
lock while the event loop is busy elsewhere. Reads stay on the engine."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, case, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.domain.deliveries import Notice
from service.domain.subscriptions import GONE
from service.store.tables import dead_letters, images, subscriptions, transitions
from service.store.writer import Writer, upsert

# Transitions read per step of a deliverer.
BATCH = 200


@dataclass(frozen=True)
class State:
    """A subscription's row."""

    name: str
    kind: str
    delivered_seq: int
    news_since: datetime
    created_at: datetime
    attempts: int
    first_failure_at: datetime | None
    next_attempt_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    delivered_at: datetime | None
    disabled_at: datetime | None
    disabled_reason: str | None

    @classmethod
    def of(cls, row: Any) -> State:
        return cls(**{column.name: getattr(row, column.name) for column in subscriptions.columns})


@dataclass(frozen=True)
class Pending:
    """A transition after a cursor: the notice to tell, and whether the cache had seen the image before it."""

    notice: Notice
    previous_exists: bool


async def latest_seq(connection: AsyncConnection) -> int:
    return int((await connection.execute(select(func.coalesce(func.max(transitions.c.id), 0)))).scalar_one())


async def ensure(writer: Writer, *, name: str, kind: str, now: datetime) -> State:
    """The subscription's row; one seen for the first time starts at the newest change (the past is not news)."""
    row = await _row(writer.engine, name)
    if row is not None and row.kind == kind:
        return State.of(row)
    replaced = row is not None

    def work(connection: Connection) -> None:
        if replaced:
            # The same name for another kind of sink is another subscription: it starts afresh, from now.
            connection.execute(subscriptions.delete().where(subscriptions.c.name == name))
        # One statement that writes (the newest change read inside it): on SQLite a transaction that read first
        # could not then take the write lock while another writer holds it. Two replicas seeing it first at
        # once: the first insert wins, the other reads it.
        newest = select(func.coalesce(func.max(transitions.c.id), 0)).scalar_subquery()
        connection.execute(
            upsert(subscriptions, dialect=connection.dialect.name, update=False).values(
                name=name, kind=kind, delivered_seq=newest, news_since=now, created_at=now, attempts=0
            )
        )

    await writer.write(work)
    found = await _row(writer.engine, name)
    assert found is not None
    return State.of(found)


async def _row(engine: AsyncEngine, name: str) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(select(subscriptions).where(subscriptions.c.name == name))).first()


async def states(engine: AsyncEngine) -> dict[str, State]:
    async with engine.connect() as connection:
        rows = (await connection.execute(select(subscriptions))).all()
    return {row.name: State.of(row) for row in rows}


async def pending(engine: AsyncEngine, *, after: int, limit: int = BATCH) -> list[Pending]:
    """The transitions after `after`, oldest first, each with the build status before it and the describe
    document as it is now.

    Reading "ids above the cursor" misses nothing because transitions become visible in id order: a status change
    always writes a revision too, and on PostgreSQL the transaction that writes revisions holds the revision-order
    lock from before its first number is drawn until it commits (service.store.cache, REVISION_ORDER_LOCK); the
    transitions are inserted inside that lock. SQLite has one writer at a time.
    """
    earlier = transitions.alias("earlier")
    previous = (
        select(case((earlier.c.exists.is_(False), GONE), else_=func.coalesce(earlier.c.build_status, "")))
        .where(
            earlier.c.region == transitions.c.region,
            earlier.c.image_id == transitions.c.image_id,
            earlier.c.id < transitions.c.id,
        )
        .order_by(earlier.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(transitions, previous.label("previous"), images.c.document.label("current_document"))
        .select_from(
            transitions.outerjoin(
                images, and_(images.c.region == transitions.c.region, images.c.image_id == transitions.c.image_id)
            )
        )
        .where(transitions.c.id > after)
        .order_by(transitions.c.id)
        .limit(limit)
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    return [_pending(row) for row in rows]


def _pending(row: Any) -> Pending:
    status = GONE if not row.exists else (row.build_status or "")
    # The document as it is now; an image gone now has none (even if this transition was not its end).
    document = orjson.loads(row.current_document) if row.current_document else None
    previous = row.previous if row.previous != "" else None
    notice = Notice(
        seq=row.id, region=row.region, image_id=row.image_id, happened_at=row.happened_at,
        observed_at=row.observed_at, source=row.source, previous=previous, status=status, document=document,
    )  # fmt: skip
    return Pending(notice=notice, previous_exists=row.previous is not None)


class Cursors:
    """Every deliverer of a process moves its cursor here: the moves asked while one transaction is being written go
    together in the next (a group commit). A burst wakes a hundred subscriptions at once, and a transaction each
    queued them behind one another for the one writer (200 ms a move, measured in bench.notify)."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._waiting: list[tuple[Any, asyncio.Future[bool]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def advance(self, *, name: str, since: int, to: int, now: datetime, delivered: bool) -> bool:
        """Every transition up to `to` is handled: the cursor moves there from `since` and failures are forgotten.
        False when the cursor is no longer at `since` (a replay moved it): nothing is changed."""
        values: dict[str, Any] = {"delivered_seq": to, "attempts": 0, "first_failure_at": None, "next_attempt_at": None}
        if delivered:
            values["delivered_at"] = now
        moved: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((_at(name, since).values(**values), moved))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="subscription cursors")
        return await moved

    async def _flush(self) -> None:
        batch: list[tuple[Any, asyncio.Future[bool]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    moves = functools.partial(_moved_each, [statement for statement, _ in batch])
                    results: list[bool] | Exception = await self._writer.write(moves)
                except Exception as exc:  # each mover hears it (an outage: DatabaseUnavailable)
                    results = exc
                for index, (_, moved) in enumerate(batch):
                    if moved.done():
                        continue
                    if isinstance(results, Exception):
                        moved.set_exception(results)
                    else:
                        moved.set_result(results[index])
                batch = []
        finally:
            # Cancelled (the process stops): whoever still waits is cancelled too, not left waiting.
            for _, moved in (*batch, *self._waiting):
                moved.cancel()
            self._waiting = []
            self._flushing = None


def _at(name: str, since: int) -> Any:
    # Compare-and-set on the cursor: a deliverer never overwrites a replay that moved it meanwhile.
    return update(subscriptions).where(subscriptions.c.name == name, subscriptions.c.delivered_seq == since)


def _moved_each(statements: list[Any], connection: Connection) -> list[bool]:
    return [_moved(connection, statement) for statement in statements]


def _moved(connection: Connection, statement: Any) -> bool:
    """Whether `statement` changed a row (the compare-and-set won)."""
    return bool(connection.execute(statement).rowcount)


async def failed(
    writer: Writer, *, name: str, since: int, attempts: int, first_failure_at: datetime,
    next_attempt_at: datetime, error: str, now: datetime,
) -> bool:  # fmt: skip
    """The transition after the cursor `since` was not accepted: when to try again, and why."""
    statement = _at(name, since).values(
        attempts=attempts, first_failure_at=first_failure_at, next_attempt_at=next_attempt_at,
        last_error=error, last_error_at=now,
    )  # fmt: skip
    return await writer.write(lambda connection: _moved(connection, statement))


async def dead_letter(
    writer: Writer, *, name: str, since: int, notice: Notice, body: bytes, attempts: int,
    first_failure_at: datetime, error: str, now: datetime,
) -> bool:  # fmt: skip
    """Give up on one delivery: keep it as a dead letter and move the cursor past it, in one transaction."""

    def work(connection: Connection) -> bool:
        moved = _at(name, since).values(
            delivered_seq=notice.seq, attempts=0, first_failure_at=None, next_attempt_at=None, last_error=error,
            last_error_at=now,
        )  # fmt: skip
        if not _moved(connection, moved):
            return False
        connection.execute(
            dead_letters.insert().values(
                subscription=name, seq=notice.seq, message_id=notice.message_id, body=body.decode(),
                attempts=attempts, first_failure_at=first_failure_at, dead_at=now, last_error=error,
            )
        )
        return True

    return await writer.write(work)


async def disable(writer: Writer, *, name: str, reason: str, now: datetime) -> None:
    statement = (
        update(subscriptions)
        .where(subscriptions.c.name == name)
        .values(disabled_at=now, disabled_reason=reason, last_error=reason, last_error_at=now)
    )
    await writer.write(lambda connection: _moved(connection, statement))


async def replay(writer: Writer, *, name: str, since_seq: int | None, since_time: datetime | None,
                 now: datetime) -> int | None:  # fmt: skip
    """Send again every transition from `since_seq` (or the first observed at or after `since_time`): the cursor
    moves back to just before it, failures are forgotten and a disabled subscription is enabled again. The new
    cursor, or None when the subscription is not known yet."""
    async with writer.engine.connect() as connection:
        if since_seq is not None:
            cursor = max(0, since_seq - 1)
            earliest = select(func.min(transitions.c.observed_at)).where(transitions.c.id >= since_seq)
            news_since = (await connection.execute(earliest)).scalar_one() or now
        else:
            assert since_time is not None
            first_id = select(func.min(transitions.c.id)).where(transitions.c.observed_at >= since_time)
            first = (await connection.execute(first_id)).scalar_one()
            cursor = (await latest_seq(connection)) if first is None else int(first) - 1
            news_since = since_time
    statement = (
        update(subscriptions)
        .where(subscriptions.c.name == name)
        .values(
            delivered_seq=cursor, news_since=news_since, attempts=0, first_failure_at=None, next_attempt_at=None,
            disabled_at=None, disabled_reason=None,
        )
    )
    known = await writer.write(lambda connection: _moved(connection, statement))
    return cursor if known else None


@dataclass(frozen=True)
class Health:
    """What GET /v3/subscriptions says of one subscription besides its configuration."""

    state: State
    # The observation time of the oldest transition not yet handled (None: caught up).
    oldest_pending_at: datetime | None
    dead_letters: int


async def health(engine: AsyncEngine) -> dict[str, Health]:
    async with engine.connect() as connection:
        rows = (await connection.execute(select(subscriptions))).all()
        counts: dict[str, int] = dict(
            (
                await connection.execute(
                    select(dead_letters.c.subscription, func.count()).group_by(dead_letters.c.subscription)
                )
            ).all()
        )
        found: dict[str, Health] = {}
        for row in rows:
            oldest = (
                await connection.execute(
                    select(transitions.c.observed_at)
                    .where(transitions.c.id > row.delivered_seq)
                    .order_by(transitions.c.id)
                    .limit(1)
                )
            ).scalar_one_or_none()
            found[row.name] = Health(State.of(row), oldest, int(counts.get(row.name, 0)))
    return found


async def dead(engine: AsyncEngine, *, name: str, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters of a subscription."""
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(dead_letters).where(dead_letters.c.subscription == name).order_by(dead_letters.c.id.desc())
                .limit(limit)
            )
        ).all()
    return [dict(row._mapping) for row in rows]


async def ami_created(engine: AsyncEngine, *, region: str, ami_id: str) -> datetime | None:
    """When the image whose AMI is `ami_id` was created, as its describe document says; None if not known."""
    async with engine.connect() as connection:
        document = (
            await connection.execute(
                select(images.c.document).where(images.c.region == region, images.c.ami_id == ami_id).limit(1)
            )
        ).scalar_one_or_none()
    if not document:
        return None
    raw = orjson.loads(document).get("creationTime")
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")) if isinstance(raw, str) else None
    except ValueError:
        return None
