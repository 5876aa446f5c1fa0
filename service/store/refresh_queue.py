"""The owed looks at AWS (the refreshes table): written with the batch that brings or settles them, and, as a work
queue, claimed when due and put back with their backoff.

A claim pushes the rows' due time past the look's bound, so another replica polling meanwhile leaves
them alone; a replica that dies holding a claim only delays those looks until the claim runs out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import refreshes as owed
from service.domain.models import Change, Source
from service.domain.refreshes import KIND_IMAGE, Need
from service.store import db
from service.store.tables import refreshes
from service.store.writer import Writer, upsert

NeedKey = tuple[str, str, str]
KEY = tuple_(refreshes.c.region, refreshes.c.kind, refreshes.c.subject)
# A need's columns, in Need's field order.
NEED_COLUMNS = tuple(refreshes.c[field.name] for field in dataclasses.fields(Need))


@dataclass(frozen=True)
class Claimed:
    """A need taken for one look, with how many looks before it failed."""

    need: Need
    attempts: int


def write_needs(
    connection: Connection,
    batch: Sequence[Change],
    *,
    needs: Sequence[Need],
    settled: Sequence[tuple[Need, datetime]],
    now: datetime,
    retry_seconds: float,
) -> None:
    """The looks owed after this batch (inside its transaction): each change's (service.domain.refreshes), then
    `needs`; `settled` needs (a look begun at the time given that found nothing to store) go.

    Runs after the batch's images are locked (PostgreSQL advisory locks), so two replicas settling and
    renewing the same image's need serialize like their image writes do.
    """
    keys = {(change.region, KIND_IMAGE, change.image_id) for change in batch}
    keys |= {need.key for need in needs} | {need.key for need, _ in settled}
    if not keys:
        return
    state: dict[NeedKey, dict[str, Any] | None] = dict.fromkeys(keys)
    for row in connection.execute(select(refreshes).where(KEY.in_(sorted(keys)))):
        state[(row.region, row.kind, row.subject)] = dict(row._mapping)
    before = {key: row for key, row in state.items() if row is not None}
    first_try_at = now + timedelta(seconds=retry_seconds)

    def owe(need: Need) -> None:
        state[need.key] = owed.row_after(state[need.key], need, first_try_at=first_try_at)

    for change in batch:
        key = (change.region, KIND_IMAGE, change.image_id)
        need = owed.need_for(change)
        if need is not None:
            owe(need)
        elif owed.settles(state[key], change):
            state[key] = None
    for need in needs:
        owe(need)
    for need, looked_at in settled:
        if owed.settled_by_time(state[need.key], looked_at):
            state[need.key] = None

    gone = [key for key in before if state[key] is None]
    if gone:
        connection.execute(refreshes.delete().where(KEY.in_(gone)))
    kept = [row for key, row in state.items() if row is not None and row != before.get(key)]
    if kept:
        connection.execute(upsert(refreshes, dialect=connection.dialect.name), kept)


class RefreshQueue:
    """The healer's side of the refreshes table, over the cache's Writer (claims and put-backs are writes like
    any other: on SQLite they take their turn on its writer thread) or, given an engine, a Writer of its own."""

    def __init__(self, store: Writer | AsyncEngine) -> None:
        self._writer = store if isinstance(store, Writer) else Writer(store, direct=None)
        self.engine = self._writer.engine

    async def claim(
        self, *, now: datetime, limit: int, hold_seconds: float, skip_regions: Collection[str] = ()
    ) -> list[Claimed]:
        """Up to `limit` needs due at `now` (oldest due first), held for `hold_seconds`; their attempts counted."""
        due = refreshes.c.due_at <= now
        candidates = select(refreshes.c.region, refreshes.c.kind, refreshes.c.subject).where(due)
        if skip_regions:
            candidates = candidates.where(refreshes.c.region.not_in(sorted(skip_regions)))
        candidates = candidates.order_by(refreshes.c.due_at).limit(limit)

        def take(connection: Connection) -> list[Claimed]:
            keys = [tuple(row) for row in connection.execute(candidates)]
            if not keys:
                return []
            # `due` again in the UPDATE: a replica that claimed a row between our SELECT and UPDATE wins it.
            claimed = connection.execute(
                update(refreshes)
                .where(KEY.in_(keys), due)
                .values(attempts=refreshes.c.attempts + 1, due_at=now + timedelta(seconds=hold_seconds))
                .returning(*NEED_COLUMNS, refreshes.c.attempts)
            )
            return [Claimed(need=_need(row[:-1]), attempts=row[-1]) for row in claimed]

        return await self._writer.write(take)

    async def retry_later(self, need: Need, *, due_at: datetime, error: str | None) -> None:
        """Put a claimed need back, due at `due_at` (a need settled meanwhile stays settled)."""
        def put_back(connection: Connection) -> None:
            connection.execute(
                update(refreshes)
                .where(
                    refreshes.c.region == need.region,
                    refreshes.c.kind == need.kind,
                    refreshes.c.subject == need.subject,
                )
                .values(due_at=due_at, last_error=error[:1000] if error else None)
            )

        await self._writer.write(put_back)

    async def backlog(self) -> int:
        async with db.translated(), self.engine.connect() as connection:
            return int((await connection.execute(select(func.count()).select_from(refreshes))).scalar_one())

    async def next_due(self) -> datetime | None:
        async with db.translated(), self.engine.connect() as connection:
            due: datetime | None = (await connection.execute(select(func.min(refreshes.c.due_at)))).scalar_one()
        return due


def _need(values: Sequence[Any]) -> Need:
    """A Need from NEED_COLUMNS' values."""
    need = Need(*values)
    return dataclasses.replace(need, source=Source(need.source))
