"""Alembic owns the schema: empty database to head, the head matches the tables, old schemas are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from service.errors import SchemaError
from service.runtime import Runtime
from service.settings import Settings
from service.store import db
from service.store.tables import metadata

pytestmark = pytest.mark.asyncio


async def test_empty_sqlite_database_upgrades_to_head(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    await db.migrate(url)
    engine = db.create_engine(Settings(database_url=url))
    try:
        assert await db.current_revision(engine) == db.head_revision()
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        assert {"images", "revisions", "transitions", "alembic_version"} <= names
    finally:
        await engine.dispose()


async def test_migrated_schema_matches_the_tables(database_url: str) -> None:
    engine = db.create_engine(Settings(database_url=database_url))

    def diff(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))

    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_migrate_twice_is_harmless(database_url: str) -> None:
    await db.migrate(database_url)
    engine = db.create_engine(Settings(database_url=database_url))
    try:
        assert await db.schema_is_current(engine)
    finally:
        await engine.dispose()


async def test_runtime_refuses_an_unmigrated_shared_database(postgres_url: str) -> None:
    # A database nobody migrated: PostgreSQL is never migrated implicitly.
    from tests.conftest import _pg_admin, _pg_database_url

    name = postgres_url.rsplit("/", 1)[1] + "_blank"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        settings = Settings(database_url=_pg_database_url(name))
        with pytest.raises(SchemaError, match="statuscache migrate"):
            async with Runtime.open(settings, poll=False):
                pass
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_embedded_sqlite_migrates_itself_on_open(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    async with Runtime.open(settings, poll=False) as runtime:
        assert await db.schema_is_current(runtime.engine)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_status_since_is_backfilled_from_the_transitions(backend: str, tmp_path: Path) -> None:
    import asyncio
    from datetime import UTC, datetime, timedelta

    from alembic import command
    from sqlalchemy import insert, select

    from service.store.tables import images, transitions
    from tests.conftest import _pg_admin, _pg_database_url

    name = f"statuscache_backfill_{id(tmp_path)}"
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    else:
        await _pg_admin(f'CREATE DATABASE "{name}"')
        url = _pg_database_url(name)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        await asyncio.to_thread(command.upgrade, db.alembic_config(url), "0002")
        engine = db.create_engine(Settings(database_url=url))
        row = {
            "region": "us-east-1", "version": 1, "exists": True, "document": "{}", "config_available": False,
            "parts": "{}", "created_at": t0, "changed_at": t0, "confirmed_at": t0, "seq": 1,
        }
        history = {
            # building, then complete: complete since its first transition
            "done": [
                ("BUILD_IN_PROGRESS", 0), ("BUILD_IN_PROGRESS", 10), ("BUILD_COMPLETE", 20), ("BUILD_COMPLETE", 30)
            ],
            # failed, in progress again, failed again: failed since the latest run began
            "again": [("BUILD_FAILED", 0), ("BUILD_IN_PROGRESS", 10), ("BUILD_FAILED", 40)],
            # no transitions at all: since the row was created
            "bare": [],
        }
        current = {"done": "BUILD_COMPLETE", "again": "BUILD_FAILED", "bare": "BUILD_IN_PROGRESS"}
        async with engine.begin() as connection:
            for image_id, steps in history.items():
                await connection.execute(
                    insert(images).values(**row, image_id=image_id, build_status=current[image_id])
                )
                for status, minutes in steps:
                    moment = t0 + timedelta(minutes=minutes)
                    await connection.execute(
                        insert(transitions).values(
                            region="us-east-1", image_id=image_id, happened_at=moment, observed_at=moment,
                            source="event", exists=True, build_status=status,
                        )
                    )
        await engine.dispose()
        await db.migrate(url)
        engine = db.create_engine(Settings(database_url=url))
        async with engine.connect() as connection:
            since = dict((await connection.execute(select(images.c.image_id, images.c.status_since))).all())
        await engine.dispose()
        assert since == {"done": t0 + timedelta(minutes=20), "again": t0 + timedelta(minutes=40), "bare": t0}
    finally:
        if backend == "postgresql":
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_fleet_history_is_backfilled_from_the_transitions(backend: str, tmp_path: Path) -> None:
    import asyncio
    from datetime import UTC, datetime, timedelta

    import orjson
    from alembic import command
    from sqlalchemy import insert, select

    from service.store.tables import builds, images, transitions
    from tests.conftest import _pg_admin, _pg_database_url

    name = f"statuscache_fleet_{id(tmp_path)}"
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    else:
        await _pg_admin(f'CREATE DATABASE "{name}"')
        url = _pg_database_url(name)
    t0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
    stack_id = "arn:aws:cloudformation:us-east-1:123456789012:stack/built/1"
    tags = [["parallelcluster:image_id", "built"], ["parallelcluster:version", "3.9.0"]]
    parts = {
        "stack": None,
        "ami": {"asOf": t0.isoformat(), "value": {"amiId": "ami-1", "state": "available", "tags": tags}},
        "imagebuilder": None,
        "config": None,
    }
    try:
        await asyncio.to_thread(command.upgrade, db.alembic_config(url), "0004_refreshes")
        engine = db.create_engine(Settings(database_url=url))
        async with engine.begin() as connection:
            await connection.execute(
                insert(images).values(
                    region="us-east-1", image_id="built", version=3, exists=True, document="{}",
                    config_available=False, parts=orjson.dumps(parts).decode(), created_at=t0, changed_at=t0,
                    confirmed_at=t0, seq=3, build_status="BUILD_COMPLETE", stack_id=stack_id, ami_id="ami-1",
                    ami_state="AVAILABLE",
                )
            )
            for minutes, stack_status, ami_state in (
                (0, "CREATE_IN_PROGRESS", None), (50, "CREATE_COMPLETE", None), (51, "CREATE_COMPLETE", "AVAILABLE")
            ):
                moment = t0 + timedelta(minutes=minutes)
                await connection.execute(
                    insert(transitions).values(
                        region="us-east-1", image_id="built", happened_at=moment, observed_at=moment, source="event",
                        exists=True, build_status="BUILD_COMPLETE" if stack_status == "CREATE_COMPLETE" else
                        "BUILD_IN_PROGRESS", stack_status=stack_status, ami_state=ami_state,
                    )
                )
        await engine.dispose()
        await db.migrate(url)
        engine = db.create_engine(Settings(database_url=url))
        async with engine.connect() as connection:
            kept = (
                await connection.execute(
                    select(transitions.c.stack_id, transitions.c.ami_id, transitions.c.pcluster_version)
                    .order_by(transitions.c.id)
                )
            ).all()
            derived = (await connection.execute(select(builds))).all()
        await engine.dispose()
        assert [tuple(row) for row in kept] == [
            (stack_id, None, "3.9.0"), (stack_id, None, "3.9.0"), (stack_id, "ami-1", "3.9.0")
        ]
        assert [(row.image_id, row.start_time, row.end_time, row.outcome, row.pcluster_version) for row in derived] == [
            ("built", t0, t0 + timedelta(minutes=50), "complete", "3.9.0")
        ]
    finally:
        if backend == "postgresql":
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
async def test_refreshes_become_rechecks_and_back_keeping_their_rows(backend: str, tmp_path: Path) -> None:
    import asyncio
    from datetime import datetime

    from alembic import command
    from sqlalchemy import text

    from tests.conftest import _pg_admin, _pg_database_url

    name = f"statuscache_rechecks_{id(tmp_path)}"
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    else:
        await _pg_admin(f'CREATE DATABASE "{name}"')
        url = _pg_database_url(name)
    # Naive UTC, as the columns store it: a raw INSERT passes no type to convert an aware time.
    t0 = datetime(2026, 1, 5, 9)
    row = {
        "region": "us-east-1", "kind": "image", "subject": "img", "requested_at": t0, "happened_at": None,
        "source": "live", "reason": "could not read config", "attempts": 2, "due_at": t0, "last_error": "x",
    }
    columns = ", ".join(row)
    values = ", ".join(f":{column}" for column in row)

    async def tables_and_indexes() -> tuple[set[str], set[str], list[tuple[object, ...]]]:
        engine = db.create_engine(Settings(database_url=url))
        try:
            async with engine.connect() as connection:
                def read(sync: Connection) -> tuple[set[str], set[str]]:
                    inspector = inspect(sync)
                    names = set(inspector.get_table_names())
                    indexes = {
                        index["name"] for table in names & {"refreshes", "rechecks"}
                        for index in inspector.get_indexes(table) if index["name"]
                    }
                    return names, indexes

                names, indexes = await connection.run_sync(read)
                table = "rechecks" if "rechecks" in names else "refreshes"
                found = await connection.execute(text(f"SELECT subject, attempts FROM {table}"))
                rows = [tuple(each) for each in found]
            return names, indexes, rows
        finally:
            await engine.dispose()

    try:
        await asyncio.to_thread(command.upgrade, db.alembic_config(url), "0007_evidence")
        engine = db.create_engine(Settings(database_url=url))
        async with engine.begin() as connection:
            await connection.execute(text(f"INSERT INTO refreshes ({columns}) VALUES ({values})"), row)
        await engine.dispose()

        await db.migrate(url)
        names, indexes, rows = await tables_and_indexes()
        assert "rechecks" in names and "refreshes" not in names
        assert indexes == {"ix_rechecks_due_at"}
        assert rows == [("img", 2)]

        await asyncio.to_thread(command.downgrade, db.alembic_config(url), "0007_evidence")
        names, indexes, rows = await tables_and_indexes()
        assert "refreshes" in names and "rechecks" not in names
        assert indexes == {"ix_refreshes_due_at"}
        assert rows == [("img", 2)]
    finally:
        if backend == "postgresql":
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
