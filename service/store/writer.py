"""The one write path: a transaction on SQLite's writer thread or the engine, retried on conflicts, errors translated.

Every write of the cache goes through `Writer.write(work)`: `work` runs inside one transaction on a
synchronous connection, so a whole batch is one hop to the writer thread (SQLite) or one greenlet
switch (PostgreSQL), never one per statement. `upsert` is the one place the dialect's
INSERT ... ON CONFLICT is chosen.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert

from service.store import db
from service.store.db import SqliteDirect

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 4
T = TypeVar("T")


class Writer:
    """Runs write transactions: on `direct`'s writer thread when there is one (serialized, one per process),
    else on the engine. A database that cannot answer surfaces as DatabaseUnavailable."""

    def __init__(self, engine: AsyncEngine, *, direct: SqliteDirect | None) -> None:
        self.engine = engine
        self._direct = direct

    @property
    def threaded(self) -> bool:
        """Whether transactions run on SQLite's writer thread (off the event loop)."""
        return self._direct is not None

    async def write(self, work: Callable[[Connection], T]) -> T:
        """`work` in one transaction; the whole transaction is tried again when it meets a transient conflict."""
        attempt = 0
        async with db.translated():
            while True:
                try:
                    return await self._transaction(work)
                except DBAPIError as exc:
                    attempt += 1
                    if attempt == WRITE_ATTEMPTS or not db.is_retryable(exc):
                        raise
                    log.warning("write: retrying after %s", type(exc.orig).__name__ if exc.orig else exc)
                    await asyncio.sleep(0.05 * 2 ** (attempt - 1))

    async def _transaction(self, work: Callable[[Connection], T]) -> T:
        if self._direct is not None:
            # One hop to the writer thread for the whole transaction, instead of one per statement.
            return await asyncio.get_running_loop().run_in_executor(self._direct.writer, self._direct.write, work)
        async with self.engine.connect() as connection:
            return await connection.run_sync(_in_transaction, work)


def _in_transaction(connection: Connection, work: Callable[[Connection], T]) -> T:
    with connection.begin():
        return work(connection)


@functools.cache
def upsert(table: Table, *, dialect: str, update: bool = True, keep: frozenset[str] = frozenset()) -> Insert:
    """INSERT into `table`; a row whose primary key is taken instead updates the stored row's other columns
    (but those in `keep`), or, `update=False`, is left as it is."""
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    key = [column.name for column in table.primary_key.columns]
    if not update:
        return statement.on_conflict_do_nothing(index_elements=key)
    updated = {
        column.name: statement.excluded[column.name]
        for column in table.columns
        if column.name not in key and column.name not in keep
    }
    return statement.on_conflict_do_update(index_elements=key, set_=updated)
