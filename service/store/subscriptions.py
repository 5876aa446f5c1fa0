"""The subscriptions' delivery state: each one's cursor over the change sequence (transitions.id), its failures,
its dead letters, and the transitions after a cursor as they are told (service.domain.deliveries.Notice)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.domain.deliveries import Notice
from service.domain.subscriptions import GONE
from service.store.db import IMMEDIATE
from service.store.tables import dead_letters, images, subscriptions, transitions

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


# SQLite: this process's subscription writes, one at a time (see _writing).
_SQLITE_WRITES: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def _writing(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A write transaction. On SQLite begun IMMEDIATE, so it waits for the write lock (busy_timeout) instead of
    failing at once when another connection wrote after it began reading (WAL's busy snapshot); and one at a time
    in this process: a hundred deliverers each holding SQLite's one write lock while the event loop is busy
    elsewhere would keep one another waiting past the busy timeout."""
    if engine.dialect.name != "sqlite":
        async with engine.begin() as connection:
            yield connection
        return
    lock = _SQLITE_WRITES.setdefault(engine, asyncio.Lock())
    async with lock, engine.connect() as connection:
        immediate = await connection.execution_options(**{IMMEDIATE: True})
        async with immediate.begin():
            yield immediate


async def latest_seq(connection: AsyncConnection) -> int:
    return int((await connection.execute(select(func.coalesce(func.max(transitions.c.id), 0)))).scalar_one())


async def ensure(engine: AsyncEngine, *, name: str, kind: str, now: datetime) -> State:
    """The subscription's row; one seen for the first time starts at the newest change (the past is not news)."""
    row = await _row(engine, name)
    if row is not None and row.kind == kind:
        return State.of(row)
    async with _writing(engine) as connection:
        if row is not None:
            # The same name for another kind of sink is another subscription: it starts afresh, from now.
            await connection.execute(subscriptions.delete().where(subscriptions.c.name == name))
        # One statement that writes (the newest change read inside it): on SQLite a transaction that read first
        # could not then take the write lock while another writer holds it. Two replicas seeing it first at
        # once: the first insert wins, the other reads it.
        newest = select(func.coalesce(func.max(transitions.c.id), 0)).scalar_subquery()
        await connection.execute(
            _insert_ignore(connection.dialect.name).values(
                name=name, kind=kind, delivered_seq=newest, news_since=now, created_at=now, attempts=0
            )
        )
    found = await _row(engine, name)
    assert found is not None
    return State.of(found)


async def _row(engine: AsyncEngine, name: str) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(select(subscriptions).where(subscriptions.c.name == name))).first()


def _insert_ignore(dialect: str) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(subscriptions).on_conflict_do_nothing(index_elements=["name"])


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


async def advance(engine: AsyncEngine, *, name: str, since: int, to: int, now: datetime, delivered: bool) -> bool:
    """Every transition up to `to` is handled: the cursor moves there from `since` and failures are forgotten.
    False when the cursor is no longer at `since` (a replay moved it): nothing is changed."""
    values: dict[str, Any] = {"delivered_seq": to, "attempts": 0, "first_failure_at": None, "next_attempt_at": None}
    if delivered:
        values["delivered_at"] = now
    async with _writing(engine) as connection:
        result = await connection.execute(_at(name, since).values(**values))
    return bool(result.rowcount)


def _at(name: str, since: int) -> Any:
    # Compare-and-set on the cursor: a deliverer never overwrites a replay that moved it meanwhile.
    return update(subscriptions).where(subscriptions.c.name == name, subscriptions.c.delivered_seq == since)


async def failed(
    engine: AsyncEngine, *, name: str, since: int, attempts: int, first_failure_at: datetime,
    next_attempt_at: datetime, error: str, now: datetime,
) -> bool:  # fmt: skip
    """The transition after the cursor `since` was not accepted: when to try again, and why."""
    async with _writing(engine) as connection:
        result = await connection.execute(
            _at(name, since).values(
                attempts=attempts, first_failure_at=first_failure_at, next_attempt_at=next_attempt_at,
                last_error=error, last_error_at=now,
            )
        )
    return bool(result.rowcount)


async def dead_letter(
    engine: AsyncEngine, *, name: str, since: int, notice: Notice, body: bytes, attempts: int,
    first_failure_at: datetime, error: str, now: datetime,
) -> bool:  # fmt: skip
    """Give up on one delivery: keep it as a dead letter and move the cursor past it, in one transaction."""
    async with _writing(engine) as connection:
        moved = await connection.execute(
            _at(name, since).values(
                delivered_seq=notice.seq, attempts=0, first_failure_at=None, next_attempt_at=None, last_error=error,
                last_error_at=now,
            )
        )
        if not moved.rowcount:
            return False
        await connection.execute(
            dead_letters.insert().values(
                subscription=name, seq=notice.seq, message_id=notice.message_id, body=body.decode(),
                attempts=attempts, first_failure_at=first_failure_at, dead_at=now, last_error=error,
            )
        )
    return True


async def disable(engine: AsyncEngine, *, name: str, reason: str, now: datetime) -> None:
    async with _writing(engine) as connection:
        await connection.execute(
            update(subscriptions)
            .where(subscriptions.c.name == name)
            .values(disabled_at=now, disabled_reason=reason, last_error=reason, last_error_at=now)
        )


async def replay(engine: AsyncEngine, *, name: str, since_seq: int | None, since_time: datetime | None,
                 now: datetime) -> int | None:  # fmt: skip
    """Send again every transition from `since_seq` (or the first observed at or after `since_time`): the cursor
    moves back to just before it, failures are forgotten and a disabled subscription is enabled again. The new
    cursor, or None when the subscription is not known yet."""
    async with engine.connect() as connection:
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
    async with _writing(engine) as connection:
        result = await connection.execute(
            update(subscriptions)
            .where(subscriptions.c.name == name)
            .values(
                delivered_seq=cursor, news_since=news_since, attempts=0, first_failure_at=None, next_attempt_at=None,
                disabled_at=None, disabled_reason=None,
            )
        )
    return cursor if result.rowcount else None


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
