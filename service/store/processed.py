"""Event ids already applied (processed_events): recorded with the batch that applied them, asked before applying.

SQS delivers at least once and EventBridge may send twice: an event whose id is here is a duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store import db
from service.store.tables import processed_events
from service.store.writer import upsert


async def seen(engine: AsyncEngine, event_ids: Sequence[str]) -> set[str]:
    """Which of `event_ids` were applied already."""
    if not event_ids:
        return set()
    async with db.translated(), engine.connect() as connection:
        found = await connection.execute(
            select(processed_events.c.event_id).where(processed_events.c.event_id.in_(list(event_ids)))
        )
        return {row.event_id for row in found}


def record(connection: Connection, event_ids: Sequence[str], *, now: datetime) -> None:
    """Note `event_ids` as applied (inside the transaction that applies them); one already noted stays as it was."""
    if event_ids:
        connection.execute(
            upsert(processed_events, dialect=connection.dialect.name, update=False),
            [{"event_id": event_id, "processed_at": now} for event_id in dict.fromkeys(event_ids)],
        )
