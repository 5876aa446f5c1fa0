"""The builds table: derived again from an image's transitions after they change, read as pages and summaries.

A summary over a year is one grouped read of this table, not a replay of every transition in it. The
transaction that writes an image's transitions only marks the image (builds_pending, one statement per
batch, so apply stays as fast as it was); `derive_pending` derives the marked images' builds in chunks
(service.domain.builds), shortly after, on whichever replica gets to them first. Builds are therefore
behind their transitions by that moment, and never lost: the mark commits with the transitions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import FromClause, Select, delete, func, select, tuple_
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from service.domain.builds import (
    COMPLETE,
    FAILED,
    OUTCOMES,
    Build,
    Transition,
    derive,
    failure_key,
    failure_reason,
)
from service.store.reads import bounded
from service.store.tables import builds, builds_pending, transitions
from service.store.writer import Writer, upsert

ImageKey = tuple[str, str]

# What the derivation reads of a transition, in service.domain.builds.Transition's field order.
DERIVED_FROM = (
    transitions.c.id,
    transitions.c.happened_at,
    transitions.c.observed_at,
    transitions.c.source,
    transitions.c.exists,
    transitions.c.stack_status,
    transitions.c.stack_status_reason,
    transitions.c.imagebuilder_status,
    transitions.c.imagebuilder_status_reason,
    transitions.c.ami_state,
    transitions.c.pcluster_version,
)
# Images rewritten per statement: bounded so the IN list stays a reasonable size.
REWRITE_CHUNK = 200


def week_of(moment: datetime) -> str:
    """The Monday (UTC) of `moment`'s ISO week, YYYY-MM-DD."""
    return (moment.date() - timedelta(days=moment.weekday())).isoformat()


def build_row(*, region: str, image_id: str, number: int, build: Build) -> dict[str, Any]:
    reason = failure_reason(build) if build.outcome == FAILED else None
    end = build.end
    return {
        "region": region,
        "image_id": image_id,
        "number": number,
        "start_time": build.start.at,
        "start_source": build.start.source,
        "start_exact": build.start.exact,
        "start_after": build.start.after,
        "end_time": end.at if end else None,
        "end_source": end.source if end else None,
        "end_exact": end.exact if end else None,
        "end_after": end.after if end else None,
        "duration_seconds": build.duration_seconds,
        "outcome": build.outcome,
        "pcluster_version": build.version,
        "stack_status_reason": build.stack_status_reason,
        "imagebuilder_status_reason": build.imagebuilder_status_reason,
        "failure_key": failure_key(reason, image_id=image_id) if reason else None,
        "phases": orjson.dumps(dict(build.phases)).decode(),
        "start_week": week_of(build.start.at),
    }


def rows_for(region: str, image_id: str, history: Sequence[Transition]) -> list[dict[str, Any]]:
    return [
        build_row(region=region, image_id=image_id, number=number, build=build)
        for number, build in enumerate(derive(history))
    ]


def mark(connection: Connection, keys: Collection[ImageKey]) -> None:
    """Note that these images' builds must be derived again (inside the transaction writing their transitions)."""
    connection.execute(
        upsert(builds_pending, dialect=connection.dialect.name, update=False),
        [{"region": region, "image_id": image_id} for region, image_id in sorted(keys)],
    )


async def derive_marked(writer: Writer) -> int:
    """Derive the builds of every image marked so far, a chunk per transaction; returns how many."""
    total = 0
    while True:
        done = await writer.write(derive_pending)
        total += done
        if done < REWRITE_CHUNK:
            return total


def derive_pending(connection: Connection, *, limit: int = REWRITE_CHUNK) -> int:
    """Derive the builds of up to `limit` marked images and unmark them (inside the caller's transaction).

    On PostgreSQL the marks are taken FOR UPDATE SKIP LOCKED: replicas share the work, never doing an image
    twice at once; a transition written meanwhile marks its image again once this transaction ends.
    """
    chosen = select(builds_pending.c.region, builds_pending.c.image_id).limit(limit)
    if connection.dialect.name == "postgresql":
        chosen = chosen.with_for_update(skip_locked=True)
    keys = [(row.region, row.image_id) for row in connection.execute(chosen)]
    if not keys:
        return 0
    rewrite(connection, keys)
    by_region: dict[str, list[str]] = defaultdict(list)
    for region, image_id in keys:
        by_region[region].append(image_id)
    for region, image_ids in by_region.items():
        connection.execute(
            delete(builds_pending).where(builds_pending.c.region == region, builds_pending.c.image_id.in_(image_ids))
        )
    return len(keys)


def rewrite(connection: Connection, keys: Collection[ImageKey]) -> None:
    """Derive the builds of `keys`' images again from their stored transitions (inside the caller's transaction)."""
    by_region: dict[str, list[str]] = defaultdict(list)
    for region, image_id in sorted(keys):
        by_region[region].append(image_id)
    for region, image_ids in by_region.items():
        for start in range(0, len(image_ids), REWRITE_CHUNK):
            _rewrite(connection, region, image_ids[start : start + REWRITE_CHUNK])


def _rewrite(connection: Connection, region: str, image_ids: list[str]) -> None:
    # `region = ? AND image_id IN (...)`, not a row-value IN: SQLite scans the whole index for the latter.
    histories: dict[str, list[Transition]] = defaultdict(list)
    found = connection.execute(
        select(transitions.c.image_id, *DERIVED_FROM)
        .where(transitions.c.region == region, transitions.c.image_id.in_(image_ids))
        .order_by(transitions.c.image_id, transitions.c.id)
    )
    for row in found:
        histories[row[0]].append(Transition(*row[1:]))
    connection.execute(delete(builds).where(builds.c.region == region, builds.c.image_id.in_(image_ids)))
    derived = [row for image_id in image_ids for row in rows_for(region, image_id, histories.get(image_id, ()))]
    if derived:
        connection.execute(builds.insert(), derived)


# --- reading ---------------------------------------------------------------------------------------------

BuildKey = tuple[datetime, str, int]


@dataclass(frozen=True)
class BuildFilter:
    region: str
    since: datetime | None = None
    until: datetime | None = None
    version: str | None = None
    outcome: str | None = None
    image_id: str | None = None

    def conditions(self, table: FromClause = builds) -> list[ColumnElement[bool]]:
        columns = table.c
        conditions: list[ColumnElement[bool]] = [columns.region == self.region]
        if self.since is not None:
            conditions.append(columns.start_time >= self.since)
        if self.until is not None:
            conditions.append(columns.start_time < self.until)
        if self.version is not None:
            conditions.append(columns.pcluster_version == self.version)
        if self.outcome is not None:
            conditions.append(columns.outcome == self.outcome)
        if self.image_id is not None:
            conditions.append(columns.image_id == self.image_id)
        return conditions


@dataclass(frozen=True)
class BuildPage:
    rows: list[Row[Any]]
    next_key: BuildKey | None


def key_of(row: Row[Any]) -> BuildKey:
    return (row.start_time, row.image_id, row.number)


async def page(
    engine: AsyncEngine,
    *,
    where: BuildFilter,
    descending: bool,
    after: BuildKey | None,
    limit: int,
    query_seconds: float,
) -> BuildPage:
    """Builds that started in the window, by start time (then image id), after the key a previous page ended on."""
    conditions = where.conditions()
    ordering = tuple_(builds.c.start_time, builds.c.image_id, builds.c.number)
    if after is not None:
        conditions.append(ordering < tuple_(*after) if descending else ordering > tuple_(*after))
    columns = (builds.c.start_time, builds.c.image_id, builds.c.number)
    order = [column.desc() for column in columns] if descending else list(columns)
    async with bounded(engine, seconds=query_seconds) as connection:
        statement = select(builds).where(*conditions).order_by(*order).limit(limit + 1)
        rows = list((await connection.execute(statement)).all())
    shown = rows[:limit]
    return BuildPage(shown, key_of(shown[-1]) if len(rows) > limit else None)


GROUPS = {"version": builds.c.pcluster_version, "week": builds.c.start_week, "outcome": builds.c.outcome}
PERCENTILES = (50, 90)
TOP_REASONS = 10


@dataclass(frozen=True)
class Group:
    key: str | None
    builds: int
    by_outcome: dict[str, int]
    # Durations of the group's complete builds, in seconds: nearest-rank percentiles and the longest.
    percentiles: dict[int, float]
    longest: float | None


@dataclass(frozen=True)
class Reason:
    key: str
    count: int
    example: str


@dataclass(frozen=True)
class Summary:
    groups: list[Group]
    reasons: list[Reason]


async def summary(engine: AsyncEngine, *, where: BuildFilter, group_by: str, query_seconds: float) -> Summary:
    """Counts per outcome, complete builds' duration percentiles and maximum per group, and the top failures.

    Three reads answered from indexes alone (ix_builds_summary, ix_builds_failures), each returning a
    handful of rows: counts and the longest duration per (group, outcome); the durations at the nearest
    ranks those counts call for (one window function: the database sorts, Python receives a few rows);
    and the most frequent failures with one example each.
    """
    key = GROUPS[group_by]
    counted = (
        select(
            key.label("key"), builds.c.outcome, func.count().label("size"),
            func.max(builds.c.duration_seconds).label("longest"),
        )
        .where(*where.conditions())
        .group_by(key, builds.c.outcome)
    )
    async with bounded(engine, seconds=query_seconds) as connection:
        count_rows = (await connection.execute(counted)).all()
        by_key: dict[str | None, dict[str, int]] = defaultdict(lambda: dict.fromkeys(OUTCOMES, 0))
        longest: dict[str | None, float] = {}
        for row in count_rows:
            by_key[row.key][row.outcome] = int(row.size)
            if row.outcome == COMPLETE and row.longest is not None:
                longest[row.key] = float(row.longest)
        ranks = {
            group: {p: -(-counts[COMPLETE] * p // 100) for p in PERCENTILES}  # ceil(n p / 100), in integers
            for group, counts in by_key.items()
            if counts[COMPLETE]
        }
        picked: dict[str | None, dict[int, float]] = defaultdict(dict)
        if ranks:
            for row in (await connection.execute(_at_ranks(key, where, ranks))).all():
                group = row.key or None
                for p, rank in ranks.get(group, {}).items():
                    if rank == row.rank:
                        picked[group][p] = float(row.seconds)
        reason_rows = (await connection.execute(_top_failures(where))).all()
    groups = [
        Group(
            key=group, builds=sum(counts.values()), by_outcome=counts, percentiles=picked.get(group, {}),
            longest=longest.get(group),
        )
        for group, counts in by_key.items()
    ]
    groups.sort(key=lambda group: _natural(group.key))
    return Summary(groups, [Reason(row.failure_key, int(row.occurrences), row.example) for row in reason_rows])


def _at_ranks(
    key: ColumnElement[Any], where: BuildFilter, ranks: dict[str | None, dict[int, int]]
) -> Select[Any]:
    """The complete builds' durations at the given ranks (ascending) of each group."""
    ranked = (
        select(
            # No version is grouped as '' here: NULL would never equal anything in the IN below.
            func.coalesce(key, "").label("key"),
            builds.c.duration_seconds.label("seconds"),
            func.row_number().over(partition_by=key, order_by=builds.c.duration_seconds).label("rank"),
        )
        .where(*where.conditions(), builds.c.outcome == COMPLETE, builds.c.duration_seconds.is_not(None))
        .subquery()
    )
    wanted = sorted({(group or "", rank) for group, by_percentile in ranks.items() for rank in by_percentile.values()})
    return select(ranked.c.key, ranked.c.rank, ranked.c.seconds).where(tuple_(ranked.c.key, ranked.c.rank).in_(wanted))


def _top_failures(where: BuildFilter) -> Select[Any]:
    counted = (
        select(builds.c.failure_key, func.count().label("occurrences"))
        # failure_key is set on failed builds only: no outcome condition, so the partial index covers it.
        .where(*where.conditions(), builds.c.failure_key.is_not(None))
        .group_by(builds.c.failure_key)
        .order_by(func.count().desc(), builds.c.failure_key)
        .limit(TOP_REASONS)
        .subquery()
    )
    other = builds.alias("other")
    example = (
        select(func.coalesce(other.c.imagebuilder_status_reason, other.c.stack_status_reason))
        .where(*where.conditions(other), other.c.failure_key == counted.c.failure_key)
        .order_by(other.c.start_time)  # the window's first occurrence: the index's own order
        .limit(1)
        .correlate(counted)
        .scalar_subquery()
    )
    return select(counted.c.failure_key, counted.c.occurrences, example.label("example")).order_by(
        counted.c.occurrences.desc(), counted.c.failure_key
    )


def _natural(key: str | None) -> tuple[Any, ...]:
    """Keys in reading order: 3.9.0 before 3.10.0, weeks by date, no key (unknown version) last."""
    if key is None:
        return (1,)
    parts = key.replace("-", ".").split(".")
    return (0, *((0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts))
