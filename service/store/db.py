"""The SQL engine from settings, the schema's place relative to the Alembic head, and what a driver error means."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable
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
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from service.errors import ConfigurationError, DatabaseUnavailable, SchemaError, StatusCacheError
from service.settings import Settings, shown_url

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
        row: tuple[Any, ...] | None = self._read_connection().execute(sql, parameters).fetchone()
        return row

    def data_version(self) -> int:
        """SQLite's `data_version` on the reader's connection: it changes whenever any other connection (this
        process's writers, another worker's, the CLI's) has committed since the last time it was read, so equal
        values mean nothing that `read_one` read has changed. One read of the database header, no row read.
        Raises sqlite3.OperationalError when SQLite is busy."""
        row = self._read_connection().execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def _read_connection(self) -> sqlite3.Connection:
        if self._reader is None:
            reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            reader.execute("PRAGMA query_only=ON")
            reader.execute("PRAGMA busy_timeout=20")
            self._reader = reader
        return self._reader

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


# SQLSTATEs meaning "the server cannot answer now", not "this statement is wrong": the connection exception
# class (08), shutdown and start-up (57P01-57P03), too many connections (53300), a statement cancelled by
# statement_timeout (57014), and a read-only server (25006: a failover in progress).
UNAVAILABLE_SQLSTATE_CLASSES = ("08",)
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "57014", "25006"})
# SQLite: locked beyond the busy timeout, I/O error, cannot open, disk full.
UNAVAILABLE_SQLITE_CODES = frozenset(
    {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_FULL}
)


# PostgreSQL conditions a retry of the whole transaction can get past: serialization_failure,
# deadlock_detected, unique_violation (two replicas inserting the same new row) and lock_not_available.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23505", "55P03"})
# SQLite: another connection holds the lock (BUSY), or a conflicting use of the same table (LOCKED).
RETRYABLE_SQLITE_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
# PostgreSQL's query_canceled: what statement_timeout raises.
QUERY_CANCELED = "57014"


def is_retryable(exc: BaseException) -> bool:
    """Whether a database error is a transient conflict (retry the transaction) rather than a fault."""
    error = _driver_error(exc)
    if isinstance(error, sqlite3.Error):
        return _sqlite_code_in(error, RETRYABLE_SQLITE_CODES)
    return _sqlstate(error) in RETRYABLE_SQLSTATES


def query_canceled(exc: BaseException) -> bool:
    """Whether PostgreSQL cancelled the statement (its statement_timeout ran out)."""
    return _sqlstate(_driver_error(exc)) == QUERY_CANCELED


def unavailable(exc: BaseException) -> DatabaseUnavailable | None:
    """The service error for a database failure that means "cannot answer now", else None (a real fault).

    The one place that knows the drivers' errors (this, `is_retryable` and `query_canceled`): SQLAlchemy's
    pool timeout and disconnects, asyncpg's SQLSTATEs (wrapped by SQLAlchemy or, at connect, raw), SQLite's
    result codes, and the socket errors a connect raises unwrapped. Decided by type and code, never by
    message text.
    """
    if isinstance(exc, DatabaseUnavailable):
        return exc
    if isinstance(exc, sa_exc.TimeoutError):
        return DatabaseUnavailable("no database connection became free in time")
    error: BaseException = exc
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return DatabaseUnavailable(f"the database connection was lost: {_brief(exc.orig)}")
        error = exc.orig if exc.orig is not None else exc
    if isinstance(error, sqlite3.Error):
        if _sqlite_code_in(error, UNAVAILABLE_SQLITE_CODES):
            return DatabaseUnavailable(f"SQLite cannot answer: {_brief(error)}")
        return None
    sqlstate = _sqlstate(error)
    if sqlstate is not None and (
        sqlstate.startswith(UNAVAILABLE_SQLSTATE_CLASSES) or sqlstate in UNAVAILABLE_SQLSTATES
    ):
        return DatabaseUnavailable(f"the database cannot answer now: {_brief(error)}")
    if isinstance(error, ConnectionError | TimeoutError | socket.gaierror):
        return DatabaseUnavailable(f"the database cannot be reached: {_brief(error)}")
    return None


@contextlib.asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Around database work: DatabaseUnavailable (from the driver's error) when the database cannot answer."""
    try:
        yield
    except Exception as exc:
        error = unavailable(exc)
        if error is None or error is exc:
            raise
        raise error from exc


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own error under SQLAlchemy's wrapper (or `exc`, raised unwrapped)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        return exc.orig
    return exc


def _sqlite_code_in(error: sqlite3.Error, codes: frozenset[int]) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    # Extended result codes (SQLITE_BUSY_SNAPSHOT, ...) carry the primary code in their low byte.
    return code is not None and code & 0xFF in codes


def _sqlstate(error: BaseException) -> str | None:
    # asyncpg's errors, and SQLAlchemy's adaptation of them, carry the SQLSTATE (psycopg calls it pgcode).
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return code if isinstance(code, str) else None


def _brief(error: BaseException | None) -> str:
    text = str(error).splitlines()[0] if error is not None and str(error) else type(error).__name__
    return text[:200]


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


def known_revisions() -> frozenset[str]:
    return frozenset(
        script.revision for script in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()
    )


def schema_problem(current: str | None, *, head: str | None, known: frozenset[str]) -> SchemaError | None:
    """What is wrong with a database whose schema is at `current` for code that needs `head` (None: nothing).

    Pure. A revision this release does not know can only come from a newer release: migrating cannot help.
    """
    if current == head:
        return None
    if current is not None and current not in known:
        return _from_newer_release(current, head=head)
    return SchemaError(
        f"database schema is at {current or 'nothing'}, the code needs {head}: run `statuscache migrate`"
    )


def _from_newer_release(current: str, *, head: str | None) -> SchemaError:
    return SchemaError(
        f"this database was migrated by a newer statuscache (its schema is at {current}, this release knows "
        f"up to {head}): run the newer release, or point STATUSCACHE_DATABASE_URL at another database"
    )


async def check_schema(engine: AsyncEngine) -> None:
    problem = schema_problem(await current_revision(engine), head=head_revision(), known=known_revisions())
    if problem is not None:
        raise problem


async def migrate(database_url: str) -> None:
    """Upgrade the database to the head revision (Alembic's async env runs the migrations).

    A schema from a newer release is refused (SchemaError) before Alembic would fail to find its revision.
    """
    engine = create_async_engine(database_url)
    try:
        current = await current_revision(engine)
    finally:
        await engine.dispose()
    if current is not None and current not in known_revisions():
        raise _from_newer_release(current, head=head_revision())
    config = alembic_config(database_url)
    # env.py drives its own event loop; keep it off this one.
    await asyncio.to_thread(command.upgrade, config, "head")


async def prepare(settings: Settings) -> AsyncEngine:
    """The engine every command opens, its schema checked (the embedded SQLite default migrated first).

    What the operator can get wrong is said in one line: ConfigurationError (fix the settings or the
    database), SchemaError (migrate, or a newer release migrated it), DatabaseUnavailable (cannot be
    reached now); see `explained`.
    """
    async with explained(settings.database_url):
        check_sqlite_location(settings.database_url)
        if settings.is_sqlite:
            # The embedded default migrates itself; a shared database is migrated by an operator.
            await migrate(settings.database_url)
        engine = create_engine(settings)
        try:
            await check_schema(engine)
        except BaseException:
            await engine.dispose()
            raise
        return engine


async def preflight(settings: Settings) -> None:
    """`prepare`, then close: what `serve` checks before uvicorn, so a mistake is one line, not a failed lifespan."""
    engine = await prepare(settings)
    await engine.dispose()


def check_sqlite_location(database_url: str) -> None:
    """Refuse a SQLite file whose directory is missing or not writable (SQLite only says "unable to open")."""
    if not database_url.startswith("sqlite"):
        return
    database = database_url.partition("://")[2].removeprefix("/").partition("?")[0]
    if not database or database == ":memory:":
        return
    directory = Path(database).absolute().parent
    if not directory.is_dir():
        raise ConfigurationError(
            f"the SQLite database {database} cannot be created: the directory {directory} does not exist; create "
            "it, or point STATUSCACHE_DATABASE_URL elsewhere"
        )
    try:
        # Tried, not asked (os.access): root passes every permission check, yet not a read-only mount's.
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigurationError(_not_writable(database, directory)) from exc


def _not_writable(database: str, directory: Path) -> str:
    return (
        f"the SQLite database {database} cannot be opened for writing: this user cannot write to {directory} "
        "(SQLite keeps its journal beside the file); fix the permissions, or point STATUSCACHE_DATABASE_URL elsewhere"
    )


# PostgreSQL's invalid_catalog_name (the database does not exist), invalid_password and
# invalid_authorization_specification (a role that does not exist, or pg_hba.conf refuses it).
MISSING_DATABASE_SQLSTATE = "3D000"
CREDENTIALS_SQLSTATES = frozenset({"28P01", "28000"})


def at_startup(exc: BaseException, *, database_url: str) -> StatusCacheError | None:
    """The operator's error for a failure to open the database at start-up, else None (not one they caused).

    Decided by type and code like `unavailable`; the URL is named without its password.
    """
    if isinstance(exc, StatusCacheError) and not isinstance(exc, DatabaseUnavailable):
        return exc
    url = shown_url(database_url)
    error = _driver_error(exc)
    sqlstate = _sqlstate(error)
    if sqlstate == MISSING_DATABASE_SQLSTATE:
        name = database_url.rpartition("/")[2].partition("?")[0]
        return ConfigurationError(
            f"the database {name!r} does not exist ({url}): create it (`createdb {name}`), or correct "
            "STATUSCACHE_DATABASE_URL"
        )
    if sqlstate in CREDENTIALS_SQLSTATES:
        return ConfigurationError(
            f"the database refused these credentials ({url}): {_brief(error)}; correct the user and password in "
            "STATUSCACHE_DATABASE_URL"
        )
    if isinstance(error, sqlite3.Error) and _sqlite_code_in(error, frozenset({sqlite3.SQLITE_CANTOPEN})):
        database = database_url.partition("://")[2].removeprefix("/")
        return ConfigurationError(_not_writable(database, Path(database).absolute().parent))
    if isinstance(error, OSError) or unavailable(exc) is not None:
        # Refused, timed out, a name that does not resolve: maybe only for now (exit status 3, not 2).
        return DatabaseUnavailable(
            f"cannot reach the database ({url}): {_brief(error)}; start it, or correct the host and port in "
            "STATUSCACHE_DATABASE_URL"
        )
    return None


@contextlib.asynccontextmanager
async def explained(database_url: str) -> AsyncIterator[None]:
    """Around opening the database at start-up: the operator's error (`at_startup`) instead of the driver's."""
    try:
        yield
    except Exception as exc:
        error = at_startup(exc, database_url=database_url)
        if error is None or error is exc:
            raise
        raise error from exc
