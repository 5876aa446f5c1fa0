"""Bounded reads: a connection whose statements are cut off after a time bound, on either database.

History queries can be asked about years of rows; none may hold a connection (or, on SQLite, the one
reader thread) for long. PostgreSQL stops the statement itself (`SET LOCAL statement_timeout`, for this
transaction only); SQLite is interrupted (`sqlite3_interrupt`, safe from another thread) when the bound
passes. Either way the caller gets QueryTimeout, and the connection goes back to the pool clean.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.errors import QueryTimeout
from service.store import db


@asynccontextmanager
async def bounded(engine: AsyncEngine, *, seconds: float) -> AsyncIterator[AsyncConnection]:
    """A read-only use of one connection; every statement in the block must finish within `seconds` of entry."""
    async with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execute(text(f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}"))
            try:
                yield connection
            except DBAPIError as exc:
                if db.query_canceled(exc):
                    raise QueryTimeout(seconds) from exc
                raise
            return
        raw = await connection.get_raw_connection()
        interrupter = _Interrupter(raw.driver_connection)
        handle = asyncio.get_running_loop().call_later(seconds, interrupter.fire)
        try:
            yield connection
        except DBAPIError as exc:
            if interrupter.fired:
                raise QueryTimeout(seconds) from exc
            raise
        finally:
            interrupter.active = False
            handle.cancel()


class _Interrupter:
    """Interrupts the SQLite connection's running statement, but only while the bounded block still owns it."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.active = True
        self.fired = False
        self.task: asyncio.Task[None] | None = None

    def fire(self) -> None:
        if self.active:
            self.fired = True
            self.task = asyncio.ensure_future(self._interrupt())

    async def _interrupt(self) -> None:
        # Checked again on the loop: the block may have ended between the timer and this task.
        if self.active:
            await self.driver.interrupt()
