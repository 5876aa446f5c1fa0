"""What reconciliation knows of a region's stored images: one read, each image with whether a recheck is owed."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store import db
from service.store.images import IMAGE_RECHECK
from service.store.tables import images, rechecks


@dataclass(frozen=True)
class Known:
    """What reconciliation needs to know about a stored image."""

    exists: bool
    stack_id: str | None
    stack_status: str | None
    imagebuilder_fetched: bool
    # A recheck of the image is owed (a part AWS did not answer for, an event's failed targeted refresh).
    recheck_owed: bool = False


async def known(engine: AsyncEngine, *, region: str) -> dict[str, Known]:
    """Every stored image of `region`, by image id."""
    async with db.translated(), engine.connect() as connection:
        rows = await connection.execute(
            select(
                images.c.image_id,
                images.c.exists,
                images.c.stack_id,
                images.c.stack_status,
                images.c.imagebuilder_as_of,
                rechecks.c.subject,
            )
            .select_from(images.outerjoin(rechecks, IMAGE_RECHECK))
            .where(images.c.region == region)
        )
        return {
            row.image_id: Known(
                exists=bool(row.exists),
                stack_id=row.stack_id,
                stack_status=row.stack_status,
                imagebuilder_fetched=row.imagebuilder_as_of is not None,
                recheck_owed=row.subject is not None,
            )
            for row in rows
        }
