"""The rechecks table (looks at AWS still owed): written with the batch that owes or settles them, and, as a
work queue, claimed when due and put back with their backoff.

A claim pushes the rows' due time past the look's bound, so another replica polling meanwhile leaves
them alone; a replica that dies holding a claim only delays those rechecks until the claim runs out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import rechecks as domain
from service.domain.models import Change, Source
from service.domain.rechecks import KIND_IMAGE, Recheck
from service.store import db
from service.store.tables import rechecks
from service.store.writer import Writer, upsert

RecheckKey = tuple[str, str, str]
KEY = tuple_(rechecks.c.region, rechecks.c.kind, rechecks.c.subject)
# A recheck's columns, in Recheck's field order.
RECHECK_COLUMNS = tuple(rechecks.c[field.name] for field in dataclasses.fields(Recheck))


@dataclass(frozen=True)
class Claimed:
    """A recheck taken for one look, with how many looks before it failed."""

    recheck: Recheck
    attempts: int


def read_rechecks(
    connection: Connection,
    batch: Sequence[Change],
    *,
    owed: Sequence[Recheck],
    settled: Sequence[tuple[Recheck, datetime]],
    images: Collection[tuple[str, str]] = (),
) -> dict[RecheckKey, dict[str, Any] | None]:
    """The stored row (None: none) of every recheck a batch may touch: its changes' images', `owed`, `settled` and
    those of `images` (whose kept news the batch merges). Read once, inside the batch's transaction, after its images
    are locked (PostgreSQL advisory locks), so two replicas settling and renewing the same image's recheck serialize
    like their image writes do; `write_rechecks` writes what the batch made of them."""
    keys = {(change.region, KIND_IMAGE, change.image_id) for change in batch}
    keys |= {recheck.key for recheck in owed} | {recheck.key for recheck, _ in settled}
    keys |= {(region, KIND_IMAGE, image_id) for region, image_id in images}
    state: dict[RecheckKey, dict[str, Any] | None] = dict.fromkeys(keys)
    if keys:
        for row in connection.execute(select(rechecks).where(KEY.in_(sorted(keys)))):
            state[(row.region, row.kind, row.subject)] = dict(row._mapping)
    return state


def held_news(state: Mapping[RecheckKey, Mapping[str, Any] | None]) -> dict[tuple[str, str], Change]:
    """The news kept (service.domain.rechecks) in these rows, by (region, image id)."""
    return {
        (region, subject): domain.decode_news(region=region, image_id=subject, text=row["news"])
        for (region, kind, subject), row in state.items()
        if kind == KIND_IMAGE and row is not None and row["news"] is not None
    }


def write_rechecks(
    connection: Connection,
    batch: Sequence[Change],
    *,
    state: dict[RecheckKey, dict[str, Any] | None],
    owed: Sequence[Recheck],
    settled: Sequence[tuple[Recheck, datetime]],
    news: Mapping[tuple[str, str], Change | None] = {},
    now: datetime,
    retry_seconds: float,
) -> None:
    """The rechecks owed after this batch (inside its transaction), from `state` (`read_rechecks`' rows, changed
    here): each change's (service.domain.rechecks), then `owed`; `settled` rechecks (a look begun at the time given
    that found nothing to store) go. `news` is what each image's recheck keeps of events' news (None: merged,
    nothing kept); it goes with its recheck.
    """
    before = {key: row for key, row in state.items() if row is not None}
    first_try_at = now + timedelta(seconds=retry_seconds)

    def owe(recheck: Recheck) -> None:
        state[recheck.key] = domain.row_after(state[recheck.key], recheck, first_try_at=first_try_at)

    for change in batch:
        key = (change.region, KIND_IMAGE, change.image_id)
        recheck = domain.recheck_for(change)
        if recheck is not None:
            owe(recheck)
        elif domain.settles(state[key], change):
            state[key] = None
    for recheck in owed:
        owe(recheck)
    for recheck, looked_at in settled:
        if domain.settled_by_time(state[recheck.key], looked_at):
            state[recheck.key] = None
    for key, owed_row in state.items():
        if owed_row is not None:
            region, kind, subject = key
            waiting = news.get((region, subject), owed_row.get("news")) if kind == KIND_IMAGE else None
            encoded = waiting if waiting is None or isinstance(waiting, str) else domain.encode_news(waiting)
            state[key] = {**owed_row, "news": encoded}

    gone = [key for key in before if state[key] is None]
    if gone:
        connection.execute(rechecks.delete().where(KEY.in_(gone)))
    kept = [row for key, row in state.items() if row is not None and row != before.get(key)]
    if kept:
        connection.execute(upsert(rechecks, dialect=connection.dialect.name), kept)


class Rechecks:
    """The rechecker's side of the rechecks table, over the cache's Writer (claims and put-backs are writes like
    any other: on SQLite they take their turn on its writer thread) or, given an engine, a Writer of its own."""

    def __init__(self, store: Writer | AsyncEngine) -> None:
        self._writer = store if isinstance(store, Writer) else Writer(store, direct=None)
        self.engine = self._writer.engine

    async def claim(
        self, *, now: datetime, limit: int, hold_seconds: float, skip_regions: Collection[str] = ()
    ) -> list[Claimed]:
        """Up to `limit` rechecks due at `now` (oldest due first), held for `hold_seconds`; their attempts counted."""
        due = rechecks.c.due_at <= now
        candidates = select(rechecks.c.region, rechecks.c.kind, rechecks.c.subject).where(due)
        if skip_regions:
            candidates = candidates.where(rechecks.c.region.not_in(sorted(skip_regions)))
        candidates = candidates.order_by(rechecks.c.due_at).limit(limit)

        def take(connection: Connection) -> list[Claimed]:
            keys = [tuple(row) for row in connection.execute(candidates)]
            if not keys:
                return []
            # `due` again in the UPDATE: a replica that claimed a row between our SELECT and UPDATE wins it.
            claimed = connection.execute(
                update(rechecks)
                .where(KEY.in_(keys), due)
                .values(attempts=rechecks.c.attempts + 1, due_at=now + timedelta(seconds=hold_seconds))
                .returning(*RECHECK_COLUMNS, rechecks.c.attempts)
            )
            return [Claimed(recheck=_recheck(row[:-1]), attempts=row[-1]) for row in claimed]

        return await self._writer.write(take)

    async def retry_later(self, recheck: Recheck, *, due_at: datetime, error: str | None) -> None:
        """Put a claimed recheck back, due at `due_at` (a recheck settled meanwhile stays settled)."""
        def put_back(connection: Connection) -> None:
            connection.execute(
                update(rechecks)
                .where(
                    rechecks.c.region == recheck.region,
                    rechecks.c.kind == recheck.kind,
                    rechecks.c.subject == recheck.subject,
                )
                .values(due_at=due_at, last_error=error[:1000] if error else None)
            )

        await self._writer.write(put_back)

    async def backlog(self) -> int:
        async with db.translated(), self.engine.connect() as connection:
            return int((await connection.execute(select(func.count()).select_from(rechecks))).scalar_one())

    async def next_due(self) -> datetime | None:
        async with db.translated(), self.engine.connect() as connection:
            due: datetime | None = (await connection.execute(select(func.min(rechecks.c.due_at)))).scalar_one()
        return due


def _recheck(values: Sequence[Any]) -> Recheck:
    """A Recheck from RECHECK_COLUMNS' values."""
    recheck = Recheck(*values)
    return dataclasses.replace(recheck, source=Source(recheck.source))
