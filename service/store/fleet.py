"""The fleet's past: ListImages as the cache knew it at a moment, and every image's transitions in a window.

"As the cache knew it at T" is describe `at=`'s meaning (service.store.queries.image_at): the latest
row observed by T, latest by (observed_at, id). Transitions are written by the same apply as the
revisions describe reads, whenever a status or what ListImages shows changes, so an image is listed at
T exactly when describe `at=T` answered it (with the statuses ListImages filters on).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select, tuple_
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import listing
from service.store.reads import bounded
from service.store.tables import images, transitions

# --- ListImages at a moment ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ListedPage:
    images: list[dict[str, Any]]
    # The last image id of this page when there are more (the next page starts after it).
    next_after: str | None


def _in_force(column: ColumnElement[Any], at: datetime) -> ColumnElement[Any]:
    """`column` of the image's transition in force at `at` (its latest observed by then), per images row."""
    return (
        select(column)
        .where(
            transitions.c.region == images.c.region,
            transitions.c.image_id == images.c.image_id,
            transitions.c.observed_at <= at,
        )
        .order_by(transitions.c.observed_at.desc(), transitions.c.id.desc())
        .limit(1)
        .correlate(images)
        .scalar_subquery()
    )


def _listed(image_status: str, at: datetime) -> ColumnElement[bool]:
    # Read from ix_transitions_image_observed alone (it carries both columns), so an image that is not listed
    # costs one index probe, not a probe and a row: PENDING and FAILED look at every image.
    if image_status == "AVAILABLE":
        return _in_force(transitions.c.ami_state, at).is_not(None)
    statuses = listing.PENDING_STACK_STATUSES if image_status == "PENDING" else listing.FAILED_STACK_STATUSES
    return _in_force(transitions.c.stack_status, at).in_(statuses)


async def images_at(
    engine: AsyncEngine,
    *,
    region: str,
    image_status: str,
    at: datetime,
    after: str | None,
    limit: int,
    query_seconds: float,
) -> ListedPage:
    """A ListImages page as the cache would have answered it at `at`, by image id after `after`."""
    statement = (
        select(
            images.c.image_id, transitions.c.stack_status, transitions.c.stack_id, transitions.c.ami_id,
            transitions.c.pcluster_version,
        )
        .select_from(images.join(transitions, transitions.c.id == _in_force(transitions.c.id, at)))
        .where(images.c.region == region, images.c.image_id > (after or ""), _listed(image_status, at))
        .order_by(images.c.image_id)
        .limit(limit + 1)
    )
    async with bounded(engine, seconds=query_seconds) as connection:
        rows = (await connection.execute(statement)).all()
    page = rows[:limit]
    items = [
        listing.item(
            image_id=row.image_id, image_status=image_status, region=region, version=row.pcluster_version,
            ami_id=row.ami_id, stack_status=row.stack_status, stack_id=row.stack_id,
        )
        for row in page
    ]
    return ListedPage(items, page[-1].image_id if len(rows) > limit else None)


# --- the fleet's transitions ------------------------------------------------------------------------

TransitionKey = tuple[datetime, int]


@dataclass(frozen=True)
class TransitionFilter:
    region: str
    since: datetime | None = None
    until: datetime | None = None
    build_status: str | None = None
    image_id: str | None = None
    source: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = [transitions.c.region == self.region]
        if self.since is not None:
            conditions.append(transitions.c.happened_at >= self.since)
        if self.until is not None:
            conditions.append(transitions.c.happened_at < self.until)
        if self.build_status is not None:
            conditions.append(transitions.c.build_status == self.build_status)
        if self.image_id is not None:
            conditions.append(transitions.c.image_id == self.image_id)
        if self.source is not None:
            conditions.append(transitions.c.source == self.source)
        return conditions


@dataclass(frozen=True)
class TransitionPage:
    rows: list[Row[Any]]
    next_key: TransitionKey | None


async def latest_id(engine: AsyncEngine, *, query_seconds: float) -> int:
    """The newest transition's id: a paging session sees the rows up to it, so later writes never shift it."""
    async with bounded(engine, seconds=query_seconds) as connection:
        return int((await connection.execute(select(func.coalesce(func.max(transitions.c.id), 0)))).scalar_one())


def _window(where: TransitionFilter, *, descending: bool, after: TransitionKey | None, upto: int) -> Select[Any]:
    conditions = [*where.conditions(), transitions.c.id <= upto]
    ordering = tuple_(transitions.c.happened_at, transitions.c.id)
    if after is not None:
        conditions.append(ordering < tuple_(*after) if descending else ordering > tuple_(*after))
    order = (
        [transitions.c.happened_at.desc(), transitions.c.id.desc()]
        if descending
        else [transitions.c.happened_at, transitions.c.id]
    )
    return select(transitions).where(*conditions).order_by(*order)


async def transitions_page(
    engine: AsyncEngine,
    *,
    where: TransitionFilter,
    descending: bool,
    after: TransitionKey | None,
    upto: int,
    limit: int,
    query_seconds: float,
) -> TransitionPage:
    """Transitions in the window by (happened_at, id), after `after`, among those with id <= `upto`.

    (happened_at, id) is unique and never changes, so pages neither skip nor repeat a row whatever is
    written meanwhile; `upto` keeps rows written after the first page out of the whole session.
    """
    async with bounded(engine, seconds=query_seconds) as connection:
        statement = _window(where, descending=descending, after=after, upto=upto).limit(limit + 1)
        rows = list(await connection.execute(statement))
    page = rows[:limit]
    return TransitionPage(page, (page[-1].happened_at, page[-1].id) if len(rows) > limit else None)


async def export(
    engine: AsyncEngine, *, where: TransitionFilter, descending: bool, upto: int, batch: int, query_seconds: float
) -> AsyncIterator[list[Row[Any]]]:
    """Every transition in the window, in batches: one short bounded query per batch, nothing held between them,
    so memory stays flat and no connection or snapshot is held while a slow client reads."""
    after: TransitionKey | None = None
    while True:
        page = await transitions_page(
            engine, where=where, descending=descending, after=after, upto=upto, limit=batch, query_seconds=query_seconds
        )
        if page.rows:
            yield page.rows
        if page.next_key is None:
            return
        after = page.next_key
