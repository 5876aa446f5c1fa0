"""The one apply: idempotence, versions, transitions, event ids, poison, readers during writes, retention."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from service.domain.models import (
    AmiInfo,
    Change,
    ConfigLocation,
    ImagebuilderState,
    Observed,
    Source,
    StackInfo,
)
from service.runtime import Runtime
from service.settings import Settings
from service.store import db, queries
from service.store.cache import Cache, Poison
from service.store.db import is_retryable
from service.store.images import READ, stored_image
from service.store.tables import builds, poison_messages, processed_events, revisions, transitions
from tests.conftest import BACKENDS, stored_images

pytestmark = pytest.mark.asyncio

REGION = "us-east-1"
needs_postgres = pytest.mark.skipif("postgresql" not in BACKENDS, reason="PostgreSQL deselected")
T = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def stack(status: str = "CREATE_IN_PROGRESS", *, reason: str | None = None) -> StackInfo:
    return StackInfo(
        name="img",
        stack_id="arn:aws:cloudformation:us-east-1:123456789012:stack/img/1",
        status=status,
        status_reason=reason,
        creation_time=T,
        tags=(("parallelcluster:image_id", "img"), ("parallelcluster:version", "3.9.0")),
    )


def change(
    at: datetime,
    *,
    image_id: str = "img",
    stack_info: StackInfo | None = None,
    ami: AmiInfo | None = None,
    imagebuilder: ImagebuilderState | None = None,
    source: Source = Source.RECONCILE,
) -> Change:
    return Change(
        region=REGION,
        image_id=image_id,
        source=source,
        observed_at=at,
        stack=Observed(at, stack_info),
        ami=Observed(at, ami),
        imagebuilder=Observed(at, imagebuilder) if imagebuilder else None,
        config=Observed(at, ConfigLocation(bucket="b", key="k", available=True)),
    )


async def count(runtime: Runtime, table: object) -> int:
    async with runtime.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


async def test_same_change_twice_changes_nothing(runtime: Runtime) -> None:
    first = await runtime.cache.apply(change(T, stack_info=stack()))
    second = await runtime.cache.apply(change(T + timedelta(seconds=5), stack_info=stack()))

    assert first.changed and first.transitioned and first.version == 1
    assert not second.changed and not second.transitioned and second.version == 1
    assert await count(runtime, transitions) == 1
    assert await count(runtime, revisions) == 1
    cached = await runtime.cache.read(region=REGION, image_id="img")
    assert cached is not None and cached.confirmed_at == T + timedelta(seconds=5) and cached.changed_at == T


async def test_status_change_bumps_version_and_writes_one_transition(runtime: Runtime) -> None:
    await runtime.cache.apply(change(T, stack_info=stack()))
    result = await runtime.cache.apply(change(T + timedelta(seconds=1), stack_info=stack("CREATE_COMPLETE")))
    assert result.changed and result.transitioned and result.version == 2
    assert result.seq is not None


async def test_document_change_without_status_change_bumps_version_only(runtime: Runtime) -> None:
    await runtime.cache.apply(change(T, stack_info=stack()))
    retagged = StackInfo(**{**stack().__dict__, "tags": (*stack().tags, ("team", "hpc"))})
    result = await runtime.cache.apply(change(T + timedelta(seconds=1), stack_info=retagged))
    assert result.changed and not result.transitioned


async def test_older_observation_is_ignored(runtime: Runtime) -> None:
    await runtime.cache.apply(change(T, stack_info=stack("CREATE_COMPLETE")))
    result = await runtime.cache.apply(change(T - timedelta(minutes=1), stack_info=stack("CREATE_IN_PROGRESS")))
    assert not result.changed
    cached = await runtime.cache.read(region=REGION, image_id="img")
    assert cached is not None and cached.document is not None and b"CREATE_COMPLETE" in cached.document


async def test_nothing_is_stored_for_an_image_that_never_existed(runtime: Runtime) -> None:
    result = await runtime.cache.apply(change(T))
    assert not result.stored
    assert await stored_images(runtime) == 0


async def test_event_ids_and_poison_commit_with_the_batch(runtime: Runtime) -> None:
    await runtime.cache.apply_many(
        [change(T, stack_info=stack())],
        event_ids=["e-1", "e-2", "e-1"],
        poison=[Poison("q", "m-1", "{bad", "body is not JSON")],
    )
    assert await runtime.cache.seen_events(["e-1", "e-2", "e-3"]) == {"e-1", "e-2"}
    assert await count(runtime, processed_events) == 2
    assert await count(runtime, poison_messages) == 1
    # With nothing to apply, the ids and poison still land.
    await runtime.cache.apply_many([], event_ids=["e-3"])
    assert await runtime.cache.seen_events(["e-3"]) == {"e-3"}


async def test_readers_never_fail_while_another_engine_writes(settings: Settings, runtime: Runtime) -> None:
    writer = Cache(db.create_engine(settings))
    errors: list[BaseException] = []
    await runtime.cache.apply(change(T, stack_info=stack()))

    async def write() -> None:
        for index in range(60):
            status = "CREATE_COMPLETE" if index % 2 else "CREATE_IN_PROGRESS"
            await writer.apply_many(
                [change(T + timedelta(seconds=index + 1), image_id=f"img-{k}", stack_info=stack(status))
                 for k in range(20)]
            )

    async def read() -> None:
        for _ in range(300):
            try:
                await runtime.cache.read(region=REGION, image_id="img")
            except BaseException as exc:  # collect, do not stop: every failure counts
                errors.append(exc)
            await asyncio.sleep(0)

    try:
        await asyncio.gather(write(), read(), read())
    finally:
        await writer.engine.dispose()
    assert errors == []
    assert await stored_images(runtime) == 21


async def test_prune_drops_old_history_but_keeps_current_revisions_and_the_state_at_the_horizon(
    runtime: Runtime,
) -> None:
    old = datetime.now(UTC) - timedelta(days=400)
    await runtime.cache.apply(change(old, stack_info=stack()))
    await runtime.cache.apply(change(old + timedelta(days=1), stack_info=stack("CREATE_COMPLETE")))
    await runtime.cache.apply(change(datetime.now(UTC), stack_info=stack("DELETE_IN_PROGRESS")))
    await runtime.cache.derive_builds()
    assert await count(runtime, builds) == 1
    horizon = datetime.now(UTC) - timedelta(days=365)

    removed = await queries.prune(runtime.engine, older_than=horizon)

    # The first transition and revision go, and the build that started 400 days ago; the second of each stays:
    # it is what was in force at the horizon, so `at=` any moment since still has its answer.
    assert removed == 3
    assert await count(runtime, transitions) == 2
    assert await count(runtime, revisions) == 2
    assert await count(runtime, builds) == 0
    cached = await runtime.cache.read(region=REGION, image_id="img")
    assert cached is not None and cached.version == 3
    at_horizon = await queries.image_at(runtime.engine, region=REGION, image_id="img", at=horizon)
    assert at_horizon is not None and at_horizon.version == 2
    assert await queries.prune(runtime.engine, older_than=horizon) == 0


async def test_a_read_after_a_local_write_sees_it_at_once(runtime: Runtime) -> None:
    await runtime.cache.apply(change(T, stack_info=stack()))
    first = await runtime.lookup.get(region=REGION, image_id="img")
    await runtime.cache.apply(change(T + timedelta(seconds=1), stack_info=stack("CREATE_COMPLETE")))
    second = await runtime.lookup.get(region=REGION, image_id="img")
    assert (first.image.version, second.image.version) == (1, 2)


async def test_another_replicas_write_is_seen_within_the_read_cache_bound(settings: Settings, runtime: Runtime) -> None:
    bound = 0.3
    runtime.lookup._settings = dataclasses.replace(settings, read_cache_seconds=bound)
    other = Cache(db.create_engine(settings))
    try:
        await runtime.cache.apply(change(T, stack_info=stack()))
        assert (await runtime.lookup.get(region=REGION, image_id="img")).image.version == 1
        await other.apply(change(T + timedelta(seconds=1), stack_info=stack("CREATE_COMPLETE")))
        await asyncio.sleep(bound + 0.05)
        assert (await runtime.lookup.get(region=REGION, image_id="img")).image.version == 2
    finally:
        await other.engine.dispose()


async def test_past_the_read_cache_bound_a_record_is_read_again_only_if_the_database_changed(
    settings: Settings, runtime: Runtime
) -> None:
    # SQLite says whether anything was committed since (its data_version): a record nothing changed is kept past
    # the bound (the describe fast path's records, when nothing is written); PostgreSQL cannot say, so every
    # record past the bound is read again, as before.
    bound = 0.2
    runtime.lookup._settings = dataclasses.replace(settings, read_cache_seconds=bound)
    reads: list[str] = []
    read_now, read = runtime.cache.read_now, runtime.cache.read

    def counted_read_now(**kwargs: str) -> object:
        reads.append(kwargs["image_id"])
        return read_now(**kwargs)

    async def counted_read(**kwargs: str) -> object:
        reads.append(kwargs["image_id"])
        return await read(**kwargs)

    runtime.cache.read_now, runtime.cache.read = counted_read_now, counted_read  # type: ignore[method-assign, assignment]
    other = Cache(db.create_engine(settings))
    try:
        await runtime.cache.apply(change(T, stack_info=stack()))
        assert (await runtime.lookup.get(region=REGION, image_id="img")).image.version == 1
        await asyncio.sleep(bound + 0.05)
        await runtime.lookup.get(region=REGION, image_id="img")  # the first look since start: read again
        reads.clear()
        for _ in range(2):
            await asyncio.sleep(bound + 0.05)
            assert (await runtime.lookup.get(region=REGION, image_id="img")).image.version == 1
        kept = not reads
        await other.apply(change(T + timedelta(seconds=1), stack_info=stack("CREATE_COMPLETE")))
        await asyncio.sleep(bound + 0.05)
        reads.clear()
        assert (await runtime.lookup.get(region=REGION, image_id="img")).image.version == 2
        assert reads  # another connection committed: read again
    finally:
        await other.engine.dispose()
    assert kept is (runtime.engine.dialect.name == "sqlite")


async def test_a_read_racing_a_write_is_not_remembered(runtime: Runtime) -> None:
    await runtime.cache.apply(change(T, stack_info=stack()))
    original_read = runtime.cache.read

    async def slow_read(**kwargs: str) -> object:
        result = await original_read(**kwargs)  # reads version 1 ...
        await runtime.cache.apply(change(T + timedelta(seconds=1), stack_info=stack("CREATE_COMPLETE")))
        return result  # ... which a write has replaced by the time the read returns

    runtime.cache.read = slow_read  # type: ignore[method-assign, assignment]
    await runtime.lookup.get(region=REGION, image_id="img")
    runtime.cache.read = original_read  # type: ignore[method-assign]
    assert (await runtime.lookup.get(region=REGION, image_id="img")).image.version == 2


async def test_the_direct_sqlite_read_answers_as_the_engine_read(runtime: Runtime) -> None:
    await runtime.cache.apply(change(T, stack_info=stack()))
    async with runtime.engine.connect() as connection:
        row = (await connection.execute(READ, {"region": REGION, "image_id": "img"})).first()
    assert row is not None
    through_engine = stored_image(region=REGION, image_id="img", columns=row)

    answered, direct = runtime.cache.read_now(region=REGION, image_id="img")

    assert answered == (runtime.engine.dialect.name == "sqlite")
    if answered:
        assert direct == through_engine
    assert through_engine.changed_at == T and through_engine.changed_at.tzinfo is UTC


# --- which database errors are retried: real errors from both databases, judged by code, not message ------


async def _postgres_error(url: str, statement: str) -> DBAPIError:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    except DBAPIError as exc:
        return exc
    finally:
        await engine.dispose()
    raise AssertionError(f"{statement!r} did not fail")


@needs_postgres
async def test_postgres_unique_violation_is_retried(empty_postgres_url: str) -> None:
    inserts = "INSERT INTO processed_events VALUES ('e-1', now()), ('e-1', now())"

    error = await _postgres_error(empty_postgres_url, inserts)

    assert getattr(error.orig, "sqlstate", None) == "23505"
    assert is_retryable(error)


@needs_postgres
async def test_postgres_lock_not_available_is_retried(empty_postgres_url: str) -> None:
    engine = create_async_engine(empty_postgres_url)
    try:
        async with engine.begin() as holder:
            await holder.execute(text("LOCK TABLE processed_events IN ACCESS EXCLUSIVE MODE"))
            error = await _postgres_error(empty_postgres_url, "LOCK TABLE processed_events NOWAIT")
    finally:
        await engine.dispose()

    assert getattr(error.orig, "sqlstate", None) == "55P03"
    assert is_retryable(error)


@needs_postgres
async def test_postgres_serialization_failure_is_retried(empty_postgres_url: str) -> None:
    engine = create_async_engine(empty_postgres_url, isolation_level="SERIALIZABLE")
    error: DBAPIError | None = None
    try:
        async with engine.connect() as first, engine.connect() as second:
            # Write skew: each reads what the other writes.
            for connection in (first, second):
                await connection.execute(text("SELECT count(*) FROM processed_events"))
            for connection, event_id in ((first, "e-1"), (second, "e-2")):
                await connection.execute(text(f"INSERT INTO processed_events VALUES ('{event_id}', now())"))
            await first.commit()
            try:
                await second.commit()
            except DBAPIError as exc:
                error = exc
    finally:
        await engine.dispose()

    assert error is not None
    assert getattr(error.orig, "sqlstate", None) == "40001"
    assert is_retryable(error)


@needs_postgres
async def test_postgres_deadlock_is_retried(empty_postgres_url: str) -> None:
    engine = create_async_engine(empty_postgres_url)
    errors: list[DBAPIError] = []
    try:
        async with engine.connect() as first, engine.connect() as second:
            for connection, key in ((first, 1), (second, 2)):
                await connection.execute(text("SET deadlock_timeout = '50ms'"))
                await connection.execute(text(f"SELECT pg_advisory_xact_lock({key})"))

            async def take(connection: AsyncConnection, key: int) -> None:
                try:
                    await connection.execute(text(f"SELECT pg_advisory_xact_lock({key})"))
                except DBAPIError as exc:
                    errors.append(exc)
                    await connection.rollback()

            await asyncio.wait_for(asyncio.gather(take(first, 2), take(second, 1)), timeout=10)
    finally:
        await engine.dispose()

    assert [getattr(error.orig, "sqlstate", None) for error in errors] == ["40P01"]
    assert is_retryable(errors[0])


@needs_postgres
@pytest.mark.parametrize(
    ("statement", "sqlstate"),
    [
        ("INSERT INTO processed_events VALUES ('e-1', NULL)", "23502"),  # not_null_violation
        ("SELEC 1", "42601"),  # syntax_error
        ("SELECT * FROM no_such_table", "42P01"),  # undefined_table
    ],
)
async def test_postgres_faults_are_not_retried(empty_postgres_url: str, statement: str, sqlstate: str) -> None:
    error = await _postgres_error(empty_postgres_url, statement)

    assert getattr(error.orig, "sqlstate", None) == sqlstate
    assert not is_retryable(error)


async def test_sqlite_busy_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0})
    try:
        with pytest.raises(DBAPIError) as raised:
            async with engine.begin() as connection:
                await connection.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        await engine.dispose()
        holder.close()

    assert isinstance(raised.value.orig, sqlite3.Error)
    assert raised.value.orig.sqlite_errorcode == sqlite3.SQLITE_BUSY
    assert is_retryable(raised.value)


async def test_sqlite_locked_is_retried() -> None:
    connection = sqlite3.connect(":memory:")
    connection.executescript("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2);")
    reading = connection.execute("SELECT x FROM t")
    reading.fetchone()
    try:
        with pytest.raises(sqlite3.OperationalError) as raised:
            connection.execute("DROP TABLE t")  # while a statement still reads it
    finally:
        connection.close()

    assert raised.value.sqlite_errorcode == sqlite3.SQLITE_LOCKED
    assert is_retryable(raised.value)


async def test_sqlite_faults_are_not_retried(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'faults.db'}")
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (x INTEGER UNIQUE)"))
            await connection.execute(text("INSERT INTO t VALUES (1)"))
        raised: list[DBAPIError] = []
        for statement in ("INSERT INTO t VALUES (1)", "SELECT * FROM no_such_table"):
            try:
                async with engine.begin() as connection:
                    await connection.execute(text(statement))
            except DBAPIError as exc:
                raised.append(exc)
    finally:
        await engine.dispose()

    codes = [getattr(error.orig, "sqlite_errorname", None) for error in raised]
    assert codes == ["SQLITE_CONSTRAINT_UNIQUE", "SQLITE_ERROR"]
    assert not any(is_retryable(error) for error in raised)


@pytest.mark.parametrize(
    "message", ["database is locked", "deadlock detected", "could not serialize access", "UNIQUE constraint failed"]
)
async def test_the_message_alone_decides_nothing(message: str) -> None:
    assert not is_retryable(sqlite3.OperationalError(message))
    assert not is_retryable(DBAPIError("statement", {}, RuntimeError(message)))
