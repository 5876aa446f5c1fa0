"""The SQL engine from settings, and the schema's place relative to the Alembic head."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from service.errors import SchemaError
from service.settings import Settings

# Found by import, not beside the source tree: the repository's migrations/ ships as service.migrations, so a
# wheel install and an editable checkout both have it (a plain directory on disk either way).
MIGRATIONS_DIR = Path(str(resources.files("service.migrations")))
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Write transactions on SQLite take the write lock up front, so two writers never deadlock on upgrade.
IMMEDIATE = "statuscache_immediate"


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        engine = create_async_engine(settings.database_url)
        _configure_sqlite(engine)
        return engine
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_pre_ping=True,
        connect_args={
            "server_settings": {
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "application_name": "statuscache",
            },
            "timeout": settings.db_pool_timeout_seconds,
        },
    )


def _configure_sqlite(engine: AsyncEngine | Engine) -> None:
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (the documented recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


T = TypeVar("T")


class SqliteDirect:
    """SQLite without aiosqlite's thread hop per statement, for the two hot paths.

    A read is one primary-key SELECT on the caller's (event loop) thread: in WAL mode a reader never
    waits for a writer, and the lookup takes microseconds, less than one hop to a thread. A write
    transaction runs whole on one writer thread: one hop per batch, and one writer per process.
    """

    def __init__(self, database: str) -> None:
        self.path = database
        self.engine = create_sync_engine(f"sqlite:///{database}", connect_args={"check_same_thread": False})
        _configure_sqlite(self.engine)
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._reader: sqlite3.Connection | None = None

    def write(self, work: Callable[[Connection], T]) -> T:
        with self.engine.connect() as connection:
            connection = connection.execution_options(**{IMMEDIATE: True})
            with connection.begin():
                return work(connection)

    def read_one(self, sql: str, parameters: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Raises sqlite3.OperationalError when SQLite is busy; the caller then takes the async path."""
        if self._reader is None:
            reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            reader.execute("PRAGMA query_only=ON")
            reader.execute("PRAGMA busy_timeout=20")
            self._reader = reader
        row: tuple[Any, ...] | None = self._reader.execute(sql, parameters).fetchone()
        return row

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.writer.shutdown(wait=True)
        self.engine.dispose()


def sqlite_direct_for(engine: AsyncEngine) -> SqliteDirect | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return SqliteDirect(database)


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    def _read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(_read)


async def schema_is_current(engine: AsyncEngine) -> bool:
    return await current_revision(engine) == head_revision()


async def check_schema(engine: AsyncEngine) -> None:
    current = await current_revision(engine)
    head = head_revision()
    if current != head:
        raise SchemaError(
            f"database schema is at {current or 'nothing'}, the code needs {head}: run `statuscache migrate`"
        )


async def migrate(database_url: str) -> None:
    """Upgrade the database to the head revision (Alembic's async env runs the migrations)."""
    config = alembic_config(database_url)
    # env.py drives its own event loop; keep it off this one.
    await asyncio.to_thread(command.upgrade, config, "head")
