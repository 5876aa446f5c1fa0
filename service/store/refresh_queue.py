"""The owed looks at AWS as a work queue: claim the due ones, put a failed one back with its backoff, count them.

Needs are written (and settled) with the changes that bring them, in service.store.cache; this module
is the healer's side. A claim pushes the rows' due time past the look's bound, so another replica
polling meanwhile leaves them alone; a replica that dies holding a claim only delays those looks until
the claim runs out.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.models import Source
from service.domain.refreshes import Need
from service.store import db
from service.store.tables import refreshes


@dataclass(frozen=True)
class Claimed:
    """A need taken for one look, with how many looks before it failed."""

    need: Need
    attempts: int


class RefreshQueue:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def claim(
        self, *, now: datetime, limit: int, hold_seconds: float, skip_regions: Collection[str] = ()
    ) -> list[Claimed]:
        """Up to `limit` needs due at `now` (oldest due first), held for `hold_seconds`; their attempts counted."""
        due = refreshes.c.due_at <= now
        candidates = select(refreshes.c.region, refreshes.c.kind, refreshes.c.subject).where(due)
        if skip_regions:
            candidates = candidates.where(refreshes.c.region.not_in(sorted(skip_regions)))
        candidates = candidates.order_by(refreshes.c.due_at).limit(limit)
        key = tuple_(refreshes.c.region, refreshes.c.kind, refreshes.c.subject)
        async with db.translated(), self.engine.begin() as connection:
            keys = [tuple(row) for row in await connection.execute(candidates)]
            if not keys:
                return []
            # `due` again in the UPDATE: a replica that claimed a row between our SELECT and UPDATE wins it.
            claimed = await connection.execute(
                update(refreshes)
                .where(key.in_(keys), due)
                .values(attempts=refreshes.c.attempts + 1, due_at=now + timedelta(seconds=hold_seconds))
                .returning(
                    refreshes.c.region, refreshes.c.kind, refreshes.c.subject, refreshes.c.requested_at,
                    refreshes.c.source, refreshes.c.reason, refreshes.c.happened_at, refreshes.c.attempts,
                )
            )
            rows = claimed.all()
        return [
            Claimed(
                need=Need(
                    region=row.region,
                    kind=row.kind,
                    subject=row.subject,
                    requested_at=row.requested_at,
                    source=Source(row.source),
                    reason=row.reason,
                    happened_at=row.happened_at,
                ),
                attempts=row.attempts,
            )
            for row in rows
        ]

    async def retry_later(self, need: Need, *, due_at: datetime, error: str | None) -> None:
        """Put a claimed need back, due at `due_at` (a need settled meanwhile stays settled)."""
        async with db.translated(), self.engine.begin() as connection:
            await connection.execute(
                update(refreshes)
                .where(
                    refreshes.c.region == need.region,
                    refreshes.c.kind == need.kind,
                    refreshes.c.subject == need.subject,
                )
                .values(due_at=due_at, last_error=error[:1000] if error else None)
            )

    async def backlog(self) -> int:
        async with db.translated(), self.engine.connect() as connection:
            return int((await connection.execute(select(func.count()).select_from(refreshes))).scalar_one())

    async def next_due(self) -> datetime | None:
        async with db.translated(), self.engine.connect() as connection:
            due: datetime | None = (await connection.execute(select(func.min(refreshes.c.due_at)))).scalar_one()
        return due
