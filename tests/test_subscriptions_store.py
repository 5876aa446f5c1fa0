"""The subscriptions' delivery state through the one write path: a first-seen subscription starts at the newest
change, and every cursor write is a compare-and-set that says whether it won."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from service.domain.deliveries import Notice
from service.settings import Settings
from service.store import db
from service.store import subscriptions as store
from service.store.tables import dead_letters, transitions
from service.store.writer import Writer

pytestmark = pytest.mark.asyncio

T = datetime(2026, 1, 1, tzinfo=UTC)
R = TypeVar("R")


class Recording(Writer):
    """The cache's writer, noting the thread each transaction ran on."""

    threads: list[str]

    async def write(self, work: Callable[[Connection], R]) -> R:
        def noted(connection: Connection) -> R:
            self.threads.append(threading.current_thread().name)
            return work(connection)

        return await super().write(noted)


@pytest_asyncio.fixture
async def writer(database_url: str) -> AsyncIterator[Recording]:
    engine = db.create_engine(Settings(database_url=database_url))
    direct = db.sqlite_direct_for(engine)
    writer = Recording(engine, direct=direct)
    writer.threads = []
    try:
        yield writer
    finally:
        if direct is not None:
            direct.close()
        await engine.dispose()


async def add_transitions(writer: Writer, count: int) -> list[int]:
    def work(connection: Connection) -> list[int]:
        rows = [
            {"region": "us-east-1", "image_id": f"img-{n}", "happened_at": T, "observed_at": T + timedelta(seconds=n),
             "source": "event", "exists": True, "build_status": "BUILD_COMPLETE"}
            for n in range(count)
        ]  # fmt: skip
        connection.execute(transitions.insert(), rows)
        return [int(i) for i in connection.execute(select(transitions.c.id).order_by(transitions.c.id)).scalars()]

    return await writer.write(work)


def notice(seq: int) -> Notice:
    return Notice(
        seq=seq, region="us-east-1", image_id="img-0", happened_at=T, observed_at=T, source="event", previous=None,
        status="BUILD_COMPLETE", document=None,
    )  # fmt: skip


async def test_a_first_seen_subscription_starts_at_the_newest_change_and_another_kind_starts_afresh(
    writer: Recording,
) -> None:
    ids = await add_transitions(writer, 3)
    first = await store.ensure(writer, name="ci", kind="webhook", now=T)
    assert first.delivered_seq == ids[-1] and first.news_since == T and first.attempts == 0
    assert await store.Cursors(writer).advance(name="ci", since=ids[-1], to=0, now=T, delivered=False)
    # Seen again as the same kind: the row as it is (no write).
    writes = len(writer.threads)
    assert (await store.ensure(writer, name="ci", kind="webhook", now=T + timedelta(hours=1))).delivered_seq == 0
    assert len(writer.threads) == writes
    # The same name for another kind of sink is another subscription.
    again = await store.ensure(writer, name="ci", kind="sns", now=T + timedelta(hours=1))
    assert again.kind == "sns" and again.delivered_seq == ids[-1] and again.news_since == T + timedelta(hours=1)


async def test_a_cursor_write_wins_only_where_the_cursor_still_is(writer: Recording) -> None:
    ids = await add_transitions(writer, 3)
    await store.ensure(writer, name="ci", kind="webhook", now=T)
    assert await store.replay(writer, name="ci", since_seq=ids[0], since_time=None, now=T) == ids[0] - 1
    cursor = ids[0] - 1
    stale = ids[-1]
    assert not await store.Cursors(writer).advance(name="ci", since=stale, to=ids[1], now=T, delivered=True)
    assert not await store.failed(
        writer, name="ci", since=stale, attempts=1, first_failure_at=T, next_attempt_at=T, error="503", now=T
    )
    assert not await store.dead_letter(
        writer, name="ci", since=stale, notice=notice(ids[0]), body=b"{}", attempts=3, first_failure_at=T,
        error="503", now=T,
    )  # fmt: skip
    state = (await store.states(writer.engine))["ci"]
    assert state.delivered_seq == cursor and state.attempts == 0 and state.last_error is None

    assert await store.failed(
        writer, name="ci", since=cursor, attempts=1, first_failure_at=T, next_attempt_at=T, error="503", now=T
    )
    assert await store.dead_letter(
        writer, name="ci", since=cursor, notice=notice(ids[0]), body=b"{}", attempts=2, first_failure_at=T,
        error="503", now=T,
    )  # fmt: skip
    assert await store.Cursors(writer).advance(name="ci", since=ids[0], to=ids[-1], now=T, delivered=True)
    state = (await store.states(writer.engine))["ci"]
    assert state.delivered_seq == ids[-1] and state.attempts == 0 and state.delivered_at == T
    async with writer.engine.connect() as connection:
        letters = (await connection.execute(select(func.count()).select_from(dead_letters))).scalar_one()
    assert letters == 1
    assert await store.replay(writer, name="nope", since_seq=1, since_time=None, now=T) is None


async def test_every_write_runs_on_the_writer(writer: Recording) -> None:
    ids = await add_transitions(writer, 1)
    writer.threads.clear()
    await store.ensure(writer, name="ci", kind="webhook", now=T)
    await store.disable(writer, name="ci", reason="410", now=T)
    assert (await store.states(writer.engine))["ci"].disabled_reason == "410"
    await store.replay(writer, name="ci", since_seq=None, since_time=T, now=T)
    assert (await store.states(writer.engine))["ci"].disabled_at is None
    assert await store.Cursors(writer).advance(name="ci", since=ids[0] - 1, to=ids[0], now=T, delivered=True)
    assert len(writer.threads) == 4
    if writer.threaded:
        # SQLite: the writer thread, whose transactions begin IMMEDIATE (service.store.db.SqliteDirect.write).
        assert all(name.startswith("sqlite-writer") for name in writer.threads)


async def test_cursor_moves_asked_together_are_written_together_each_with_its_own_answer(writer: Recording) -> None:
    """A burst wakes every subscription at once: their cursor moves share transactions (a group commit), and each
    still hears whether its own compare-and-set won."""
    import asyncio

    ids = await add_transitions(writer, 3)
    names = [f"s{n:02d}" for n in range(40)]
    for name in names:
        await store.ensure(writer, name=name, kind="webhook", now=T)
    cursors = store.Cursors(writer)
    writer.threads.clear()
    stale = {"s03", "s17"}  # their cursor is not where they think: a replay moved it
    moved = await asyncio.gather(*(
        cursors.advance(name=name, since=ids[0] if name in stale else ids[-1], to=ids[-1] + 5, now=T, delivered=True)
        for name in names
    ))  # fmt: skip
    assert moved == [name not in stale for name in names]
    # The first move is written at once; the 39 asked meanwhile wait for it and go together in the next.
    assert len(writer.threads) <= 2
    states = await store.states(writer.engine)
    assert {name for name in names if states[name].delivered_seq == ids[-1] + 5} == set(names) - stale
    assert all(states[name].delivered_seq == ids[-1] for name in stale)


async def test_a_cursor_write_that_fails_tells_each_mover_and_the_next_ones_are_written(
    writer: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from service.errors import DatabaseUnavailable

    ids = await add_transitions(writer, 1)
    await store.ensure(writer, name="a", kind="webhook", now=T)
    await store.ensure(writer, name="b", kind="webhook", now=T)
    cursors = store.Cursors(writer)
    real = Writer.write
    failing = [True]

    async def write(self: Writer, work: Callable[[Connection], R]) -> R:
        if failing[0]:
            failing[0] = False
            raise DatabaseUnavailable("the database is down")
        return await real(self, work)

    monkeypatch.setattr(Writer, "write", write)
    answers = await asyncio.gather(
        cursors.advance(name="a", since=ids[0], to=ids[0] + 1, now=T, delivered=True),
        cursors.advance(name="b", since=ids[0], to=ids[0] + 1, now=T, delivered=True),
        return_exceptions=True,
    )
    # Asked together, written together: both hear the outage, neither cursor moved.
    assert all(isinstance(answer, DatabaseUnavailable) for answer in answers)
    assert {state.delivered_seq for state in (await store.states(writer.engine)).values()} == {ids[0]}
    # The next moves are written (the failed transaction left nothing behind).
    assert await asyncio.gather(
        cursors.advance(name="a", since=ids[0], to=ids[0] + 1, now=T, delivered=True),
        cursors.advance(name="b", since=ids[0], to=ids[0] + 1, now=T, delivered=True),
    ) == [True, True]
