"""When each region was listed: the first and the latest reconcile pass (of any replica) that listed it whole.

A list answer for a region no pass has listed yet would be an empty (or partial) fleet presented as truth,
so ListImages answers 503 until the region has a row here (service.api.listing); the latest listing is how
old a list answer's confirmation is (`X-Cache-Stale: unconfirmed` past the staleness bound). In the
database, so every replica knows what any replica's pass listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store import db
from service.store.tables import region_listings
from service.store.writer import Writer, upsert

# What a later listing leaves as it is.
KEPT = frozenset({"first_listed_at"})


@dataclass(frozen=True, slots=True)
class Listing:
    region: str
    first_listed_at: datetime
    listed_at: datetime


async def record(writer: Writer, *, region: str, at: datetime) -> None:
    """A pass that began at `at` listed `region` whole (its changes are committed)."""

    def write(connection: Connection) -> None:
        statement = upsert(region_listings, dialect=connection.dialect.name, keep=KEPT)
        connection.execute(statement, {"region": region, "first_listed_at": at, "listed_at": at})

    await writer.write(write)


async def read(engine: AsyncEngine, regions: Sequence[str]) -> dict[str, Listing]:
    """The listings of `regions` that have one."""
    async with db.translated(), engine.connect() as connection:
        rows = await connection.execute(select(region_listings).where(region_listings.c.region.in_(list(regions))))
        return {row.region: Listing(row.region, row.first_listed_at, row.listed_at) for row in rows}
