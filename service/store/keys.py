"""Secrets the replicas of one deployment share, kept in the database: made on first use, never changed.

Tokens a replica signs (pagination tokens, session cookies) must verify on every other replica and
after a restart, with nothing for an operator to configure: the first process to ask for a key
creates it, every other one reads that one (the insert does nothing when the name is taken).
"""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.tables import service_keys
from service.store.writer import upsert
from service.support.clock import utcnow

KEY_BYTES = 32


class Keys:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._known: dict[str, bytes] = {}

    async def get(self, name: str) -> bytes:
        """The deployment's secret called `name` (created now if there is none yet)."""
        known = self._known.get(name)
        if known is not None:
            return known
        async with self._engine.begin() as connection:
            await connection.execute(
                upsert(service_keys, dialect=self._engine.dialect.name, update=False).values(
                    name=name, secret=secrets.token_hex(KEY_BYTES), created_at=utcnow()
                )
            )
            secret = (
                await connection.execute(select(service_keys.c.secret).where(service_keys.c.name == name))
            ).scalar_one()
        key = bytes.fromhex(secret)
        self._known[name] = key
        return key
