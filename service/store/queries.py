"""Read-only questions about the past and the whole cache: history, time travel, list pages, the change feed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Column, Select, Table, and_, delete, exists, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import listing
from service.domain.describe import iso_time
from service.domain.models import CachedImage
from service.domain.records import decode_parts
from service.store.images import REVISION_READ_COLUMNS, stored_image
from service.store.tables import builds, images, processed_events, revisions, transitions
from service.support.bounded import BoundedDict
from service.support.clock import as_utc, utcnow

# --- history ---------------------------------------------------------------------------------------


def transition_json(row: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "time": iso_time(row.happened_at),
        "observedTime": iso_time(row.observed_at),
        "source": row.source,
    }
    for key, value in (
        ("imageBuildStatus", row.build_status),
        ("cloudformationStackStatus", row.stack_status),
        ("cloudformationStackStatusReason", row.stack_status_reason),
        ("imagebuilderImageStatus", row.imagebuilder_status),
        ("imagebuilderImageStatusReason", row.imagebuilder_status_reason),
        ("ec2AmiState", row.ami_state),
    ):
        if value is not None:
            item[key] = value
    if not row.exists:
        item["gone"] = True
    return item


@dataclass(frozen=True)
class HistoryPage:
    transitions: list[dict[str, Any]]
    # Where the next page starts (the last transition's id), or None on the last page.
    next_after: int | None
    known: bool


async def history(
    engine: AsyncEngine,
    *,
    region: str,
    image_id: str,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    after: int | None,
) -> HistoryPage:
    """Transitions oldest first (in the order the cache learned them), `time` within [since, until].

    `after` is the cursor a previous page gave as `next_after` (the API carries it in a signed nextToken).
    """
    after_id = after or 0
    conditions = [transitions.c.region == region, transitions.c.image_id == image_id, transitions.c.id > after_id]
    if since is not None:
        conditions.append(transitions.c.happened_at >= since)
    if until is not None:
        conditions.append(transitions.c.happened_at <= until)
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(transitions).where(*conditions).order_by(transitions.c.id).limit(limit + 1)
            )
        ).all()
        known = bool(rows) or after_id > 0 or (
            await connection.execute(
                select(func.count())
                .select_from(transitions)
                .where(transitions.c.region == region, transitions.c.image_id == image_id)
            )
        ).scalar_one() > 0
    page = rows[:limit]
    next_after = int(page[-1].id) if len(rows) > limit else None
    return HistoryPage([transition_json(row) for row in page], next_after, known)


# --- time travel -----------------------------------------------------------------------------------

# A revision row as served, with the keys the change feed needs.
_REVISION_KEYS = (revisions.c.seq, revisions.c.region, revisions.c.image_id)
REVISIONS = select(*_REVISION_KEYS, *REVISION_READ_COLUMNS)


def _revision_image(row: Any) -> CachedImage:
    return stored_image(region=row.region, image_id=row.image_id, columns=row[len(_REVISION_KEYS) :])


async def image_at(engine: AsyncEngine, *, region: str, image_id: str, at: datetime) -> CachedImage | None:
    """The record as the cache knew it at `at` (latest revision observed by then); None if unknown then."""
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                REVISIONS.where(
                    revisions.c.region == region, revisions.c.image_id == image_id, revisions.c.observed_at <= at
                )
                .order_by(revisions.c.observed_at.desc(), revisions.c.seq.desc())
                .limit(1)
            )
        ).first()
    if row is None:
        return None
    return _revision_image(row)


# --- list ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListPage:
    """A page's entries as pcluster's JSON array (the entries' own bytes) and where the next page starts.

    The API wraps them as `{"images": [...], "nextToken": ...}`, with the cursor signed into a token.
    """

    images_json: bytes
    # The last image id of this page, where the next one starts; None on the last page.
    next_after: str | None

    @property
    def images(self) -> list[dict[str, Any]]:
        images: list[dict[str, Any]] = orjson.loads(self.images_json)
        return images


class ListEntries:
    """Each image's list entry as JSON, kept with the stored `parts` it was made from.

    Building a page then decodes only the images whose parts changed since the page was last built, not
    all hundred of them.
    """

    def __init__(self, max_entries: int = 20_000) -> None:
        self._memo: BoundedDict[tuple[str, str, str], tuple[str, bytes]] = BoundedDict(max_entries)

    def entry(self, *, region: str, image_status: str, image_id: str, parts: str) -> bytes:
        key = (region, image_status, image_id)
        known = self._memo.get(key)
        if known is not None and known[0] == parts:
            return known[1]
        entry = orjson.dumps(
            listing.summary(image_id=image_id, parts=decode_parts(parts), image_status=image_status, region=region)
        )
        self._memo[key] = (parts, entry)
        return entry


async def list_images(
    engine: AsyncEngine,
    *,
    region: str,
    image_status: str,
    after: str | None,
    limit: int = 100,
    entries: ListEntries | None = None,
) -> ListPage:
    """A page of images in pcluster's ListImages shape, keyed by image id so pages never skip or repeat.

    `after` is the cursor a previous page gave as `next_after` (the API carries it in a signed nextToken).
    """
    after = after or ""
    if image_status == "AVAILABLE":
        condition = and_(images.c.ami_id.is_not(None), images.c.exists.is_(True))
    elif image_status == "PENDING":
        condition = images.c.stack_status.in_(listing.PENDING_STACK_STATUSES)
    else:
        condition = images.c.stack_status.in_(listing.FAILED_STACK_STATUSES)
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(images.c.image_id, images.c.parts)
                .where(images.c.region == region, condition, images.c.image_id > after)
                .order_by(images.c.image_id)
                .limit(limit + 1)
            )
        ).all()
    page = rows[:limit]
    next_after = str(page[-1].image_id) if len(rows) > limit else None
    memo = entries or ListEntries(limit)
    # orjson.dumps of the list of entries, assembled from the entries' own bytes.
    images_json = b"[" + b",".join(
        memo.entry(region=region, image_status=image_status, image_id=row.image_id, parts=row.parts) for row in page
    ) + b"]"
    return ListPage(images_json, next_after)


# --- the change feed -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    seq: int
    image: CachedImage


FEED_PAGE = 100


async def revisions_after(
    engine: AsyncEngine,
    *,
    after: int,
    region: str | None,
    image_id: str | None,
    upto: int | None = None,
    limit: int = FEED_PAGE,
) -> list[Revision]:
    """Revisions numbered above `after` (and at most `upto`), in order: at most `limit`, matching the filters."""
    conditions = [revisions.c.seq > after]
    if upto is not None:
        conditions.append(revisions.c.seq <= upto)
    if region is not None:
        conditions.append(revisions.c.region == region)
    if image_id is not None:
        conditions.append(revisions.c.image_id == image_id)
    async with engine.connect() as connection:
        rows = (
            await connection.execute(REVISIONS.where(*conditions).order_by(revisions.c.seq).limit(limit))
        ).all()
    return [Revision(seq=row.seq, image=_revision_image(row)) for row in rows]


async def latest_seq(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.coalesce(func.max(revisions.c.seq), 0)))).scalar_one())


# --- retention -------------------------------------------------------------------------------------


async def prune(engine: AsyncEngine, *, older_than: datetime, batch: int = 1000) -> int:
    """Delete history older than `older_than` in small transactions, keeping every later moment answerable.

    Per image, the transitions and revisions observed before `older_than` go, except the latest of each
    observed by then: the state in force at `older_than`, which ListImages and describe `at=` any later
    moment may still need. The current revision of every image is kept (the change feed needs it), and
    builds that started before `older_than` go (their start is no longer known).
    """
    removed = 0
    while True:
        async with engine.begin() as connection:
            gone_t = await connection.execute(
                delete(transitions).where(transitions.c.id.in_(_superseded_transitions(older_than, batch)))
            )
            gone_r = await connection.execute(
                delete(revisions).where(revisions.c.seq.in_(_superseded_revisions(older_than, batch)))
            )
            old_builds = (
                select(builds.c.region, builds.c.image_id, builds.c.number)
                .where(builds.c.start_time < older_than)
                .limit(batch)
            )
            gone_b = await connection.execute(
                delete(builds).where(tuple_(builds.c.region, builds.c.image_id, builds.c.number).in_(old_builds))
            )
            count = (gone_t.rowcount or 0) + (gone_r.rowcount or 0) + (gone_b.rowcount or 0)
        removed += count
        if count < batch:
            break
    async with engine.begin() as connection:
        await connection.execute(
            delete(processed_events).where(processed_events.c.processed_at < _event_horizon(older_than))
        )
    return removed


def _superseded_transitions(older_than: datetime, batch: int) -> Select[tuple[int]]:
    return _superseded(transitions, transitions.c.id, older_than=older_than, batch=batch)


def _superseded_revisions(older_than: datetime, batch: int) -> Select[tuple[int]]:
    # An image's current revision stays whatever its age: the change feed serves it.
    current = select(images.c.seq)
    return _superseded(revisions, revisions.c.seq, older_than=older_than, batch=batch).where(
        revisions.c.seq.not_in(current)
    )


def _superseded(table: Table, order: Column[Any], *, older_than: datetime, batch: int) -> Select[tuple[int]]:
    """Up to `batch` rows of `table` (by `order`, their id) observed before `older_than` that a later row of the
    same image, also observed by then, supersedes."""
    later = table.alias("later")
    superseded = exists().where(
        later.c.region == table.c.region,
        later.c.image_id == table.c.image_id,
        later.c.observed_at <= older_than,
        tuple_(later.c.observed_at, later.c[order.name]) > tuple_(table.c.observed_at, order),
    )
    return select(order).where(table.c.observed_at < older_than, superseded).limit(batch)


def _event_horizon(older_than: datetime) -> datetime:
    # Duplicates arrive within SQS's retention (at most 14 days): event ids need not be kept longer.
    return max(as_utc(older_than), utcnow() - timedelta(days=15))

