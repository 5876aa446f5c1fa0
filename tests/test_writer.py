"""The one write path: a transient conflict is tried again whole, a fault is not, an outage is DatabaseUnavailable;
and the one upsert."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from service.errors import DatabaseUnavailable
from service.settings import Settings
from service.store import db
from service.store.tables import processed_events, service_keys
from service.store.writer import Writer, upsert

pytestmark = pytest.mark.asyncio

T = datetime(2026, 1, 1, tzinfo=UTC)
Work = Callable[[Connection], None]


@pytest_asyncio.fixture
async def writer(database_url: str) -> AsyncIterator[Writer]:
    """The cache's writer: SQLite's writer thread, or the PostgreSQL engine."""
    engine = db.create_engine(Settings(database_url=database_url))
    direct = db.sqlite_direct_for(engine)
    try:
        yield Writer(engine, direct=direct)
    finally:
        if direct is not None:
            direct.close()
        await engine.dispose()


def driver_error(code: int) -> DBAPIError:
    error = sqlite3.OperationalError("as the driver raised it")
    error.sqlite_errorcode = code
    return DBAPIError("INSERT ...", {}, error)


async def events_stored(writer: Writer) -> int:
    async with writer.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(processed_events))).scalar_one())


async def test_a_transient_conflict_is_tried_again_in_a_fresh_transaction(writer: Writer) -> None:
    attempts: list[int] = []

    def work(connection: Connection) -> str:
        connection.execute(processed_events.insert().values(event_id=f"e-{len(attempts)}", processed_at=T))
        attempts.append(1)
        if len(attempts) < 3:
            raise driver_error(sqlite3.SQLITE_BUSY)
        return "written"

    assert await writer.write(work) == "written"

    assert len(attempts) == 3
    # The failed attempts' inserts were rolled back with them.
    assert await events_stored(writer) == 1


@pytest.mark.parametrize(
    ("code", "raised", "attempts"),
    [
        # A fault: no retry would get past it.
        (sqlite3.SQLITE_CONSTRAINT, DBAPIError, 1),
        # Locked to the end: every attempt is made, then the database cannot answer now.
        (sqlite3.SQLITE_LOCKED, DatabaseUnavailable, 4),
    ],
)
async def test_a_fault_is_raised_at_once_and_a_conflict_after_the_last_attempt(
    writer: Writer, code: int, raised: type[Exception], attempts: int
) -> None:
    made: list[int] = []

    def work(connection: Connection) -> None:
        made.append(1)
        raise driver_error(code)

    with pytest.raises(raised):
        await writer.write(work)
    assert len(made) == attempts


async def test_a_database_that_cannot_answer_is_database_unavailable(writer: Writer) -> None:
    def work(connection: Connection) -> None:
        raise driver_error(sqlite3.SQLITE_IOERR)

    with pytest.raises(DatabaseUnavailable) as raised:
        await writer.write(work)
    assert isinstance(raised.value.__cause__, DBAPIError)


async def test_upsert_updates_the_other_columns_keeps_what_it_is_told_or_leaves_the_row(writer: Writer) -> None:
    name = f"test-{secrets.token_hex(4)}"

    def storing(secret: str, at: datetime, *, update: bool, keep: frozenset[str] = frozenset()) -> Work:
        def work(connection: Connection) -> None:
            statement = upsert(service_keys, dialect=connection.dialect.name, update=update, keep=keep)
            connection.execute(statement, [{"name": name, "secret": secret, "created_at": at}])

        return work

    async def stored() -> tuple[str, datetime]:
        async with writer.engine.connect() as connection:
            row = (await connection.execute(select(service_keys).where(service_keys.c.name == name))).one()
        return row.secret, row.created_at

    later = T + timedelta(days=1)
    await writer.write(storing("a", T, update=False))
    assert await stored() == ("a", T)
    await writer.write(storing("b", later, update=False))
    assert await stored() == ("a", T)
    await writer.write(storing("c", later, update=True, keep=frozenset({"created_at"})))
    assert await stored() == ("c", T)
    await writer.write(storing("d", later, update=True))
    assert await stored() == ("d", later)
