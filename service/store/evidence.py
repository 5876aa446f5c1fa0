"""The evidence tables: a build's kept stack events, log streams and log events, written whole or not at all."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, delete, func, insert, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.builds import COMPLETE, DELETED, FAILED
from service.store.tables import builds, evidence, evidence_logs, images
from service.store.writer import Writer

# describe's imageBuildStatus of an image whose build has ended with its stack still there.
BUILD_FAILED = "BUILD_FAILED"
BUILD_COMPLETE = "BUILD_COMPLETE"


@dataclass(frozen=True)
class Capture:
    """What one capture read, ready to store: every part whole, or the capture is not stored at all."""

    region: str
    image_id: str
    build_start: datetime
    outcome: str
    captured_at: datetime
    ended_at: datetime | None
    # None: the resource was already gone when the capture looked.
    stack_events: list[dict[str, Any]] | None
    log_streams: list[dict[str, Any]] | None
    log_events: dict[str, list[dict[str, Any]]]
    imagebuilder_reason: str | None
    cut: bool
    aws_calls: int

    def encoded(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The evidence row and its log rows, with the bytes they take counted into the row."""
        stack = orjson.dumps(self.stack_events).decode() if self.stack_events is not None else None
        streams = orjson.dumps(self.log_streams).decode() if self.log_streams is not None else None
        logs = [
            {"region": self.region, "image_id": self.image_id, "log_stream_name": name,
             "events": orjson.dumps(events).decode()}
            for name, events in self.log_events.items()
        ]  # fmt: skip
        logs_size = sum(len(row["events"]) + len(row["log_stream_name"]) for row in logs)
        size = len(stack or "") + len(streams or "") + logs_size
        row = {
            "region": self.region, "image_id": self.image_id, "build_start": self.build_start,
            "outcome": self.outcome, "captured_at": self.captured_at, "ended_at": self.ended_at,
            "stack_events": stack, "log_streams": streams, "imagebuilder_reason": self.imagebuilder_reason,
            "cut": self.cut, "size_bytes": size, "aws_calls": self.aws_calls,
        }  # fmt: skip
        return row, logs


@dataclass(frozen=True)
class Kept:
    """One image's kept evidence, as served."""

    build_start: datetime
    outcome: str
    captured_at: datetime
    stack_events: list[dict[str, Any]] | None
    log_streams: list[dict[str, Any]] | None
    imagebuilder_reason: str | None
    cut: bool
    size_bytes: int


@dataclass(frozen=True)
class Owed:
    """An ended build whose evidence is not kept yet."""

    region: str
    image_id: str
    build_start: datetime
    outcome: str
    ended_at: datetime | None
    # The build's stack (its ARN): CloudFormation answers by id for 90 days after the stack is deleted, by name
    # only while it exists, so a capture that comes after cleanup still finds the stack's events.
    stack_id: str | None = None


async def save(writer: Writer, capture: Capture) -> None:
    """Store a capture in one transaction, replacing the image's earlier evidence (of an earlier build)."""
    row, logs = capture.encoded()
    key = and_(evidence.c.region == capture.region, evidence.c.image_id == capture.image_id)
    logs_key = and_(evidence_logs.c.region == capture.region, evidence_logs.c.image_id == capture.image_id)

    def work(connection: Connection) -> None:
        connection.execute(delete(evidence_logs).where(logs_key))
        connection.execute(delete(evidence).where(key))
        connection.execute(insert(evidence).values(row))
        if logs:
            connection.execute(insert(evidence_logs), logs)

    await writer.write(work)


async def read(engine: AsyncEngine, *, region: str, image_id: str) -> Kept | None:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                select(evidence).where(evidence.c.region == region, evidence.c.image_id == image_id)
            )
        ).first()
    if row is None:
        return None
    return Kept(
        build_start=row.build_start,
        outcome=row.outcome,
        captured_at=row.captured_at,
        stack_events=orjson.loads(row.stack_events) if row.stack_events is not None else None,
        log_streams=orjson.loads(row.log_streams) if row.log_streams is not None else None,
        imagebuilder_reason=row.imagebuilder_reason,
        cut=row.cut,
        size_bytes=row.size_bytes,
    )


async def read_log(engine: AsyncEngine, *, region: str, image_id: str, stream: str) -> list[dict[str, Any]] | None:
    """A kept stream's events, oldest first; None when that stream was not kept."""
    async with engine.connect() as connection:
        raw = (
            await connection.execute(
                select(evidence_logs.c.events).where(
                    evidence_logs.c.region == region,
                    evidence_logs.c.image_id == image_id,
                    evidence_logs.c.log_stream_name == stream,
                )
            )
        ).scalar()
    return orjson.loads(raw) if raw is not None else None


async def owed(engine: AsyncEngine, *, regions: Collection[str], since: datetime, limit: int) -> list[Owed]:
    """Builds that ended since `since` and whose evidence is not kept (none, or an earlier build's), oldest end
    first: what capture still owes. Derived from the tables, so a restart or a failed capture loses none.

    Besides the derived builds, an image first seen already ended (its start never observed, so no build was
    derived: a cache started after it, a lost event) is owed too while its stack is there, from the moment
    its status began."""
    kept = evidence.alias("kept")
    regions = list(regions)
    derived = (
        select(
            builds.c.region, builds.c.image_id, builds.c.start_time, builds.c.outcome, builds.c.end_time,
            images.c.stack_id,
        )
        .outerjoin(kept, and_(kept.c.region == builds.c.region, kept.c.image_id == builds.c.image_id))
        .outerjoin(images, and_(images.c.region == builds.c.region, images.c.image_id == builds.c.image_id))
        .where(
            builds.c.region.in_(regions),
            builds.c.outcome.in_((COMPLETE, FAILED, DELETED)),
            builds.c.end_time >= since,
            or_(kept.c.image_id.is_(None), kept.c.build_start < builds.c.start_time),
        )
        .order_by(builds.c.end_time)
        .limit(limit)
    )
    ended_at = func.coalesce(images.c.status_since, images.c.changed_at)
    unseen = (
        select(
            images.c.region, images.c.image_id, ended_at.label("ended_at"), images.c.build_status, images.c.stack_id
        )
        .outerjoin(kept, and_(kept.c.region == images.c.region, kept.c.image_id == images.c.image_id))
        .outerjoin(builds, and_(builds.c.region == images.c.region, builds.c.image_id == images.c.image_id))
        .where(
            images.c.region.in_(regions),
            images.c.exists.is_(True),
            images.c.stack_status.is_not(None),
            images.c.build_status.in_((BUILD_FAILED, BUILD_COMPLETE)),
            ended_at >= since,
            kept.c.image_id.is_(None),
            builds.c.image_id.is_(None),
        )
        .limit(limit)
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(derived)).all()
        first_seen = (await connection.execute(unseen)).all()
    owed = [Owed(row.region, row.image_id, row.start_time, row.outcome, row.end_time, row.stack_id) for row in rows]
    owed += [
        Owed(row.region, row.image_id, row.ended_at, FAILED if row.build_status == BUILD_FAILED else COMPLETE,
             row.ended_at, row.stack_id)
        for row in first_seen
    ]  # fmt: skip
    return owed[:limit]


async def kept_builds(engine: AsyncEngine, *, region: str, image_ids: Collection[str]) -> dict[str, datetime]:
    """For /v3/image-builds: the build start whose evidence is kept, per image id asked about."""
    if not image_ids:
        return {}
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(evidence.c.image_id, evidence.c.build_start).where(
                    evidence.c.region == region, evidence.c.image_id.in_(list(image_ids))
                )
            )
        ).all()
    return {row.image_id: row.build_start for row in rows}


async def prune(engine: AsyncEngine, *, older_than: datetime) -> int:
    """Drop evidence captured before `older_than` (the history retention's horizon)."""
    async with engine.begin() as connection:
        old = select(evidence.c.region, evidence.c.image_id).where(evidence.c.captured_at < older_than)
        keys = (await connection.execute(old)).all()
        for key in keys:
            await connection.execute(
                delete(evidence_logs).where(
                    evidence_logs.c.region == key.region, evidence_logs.c.image_id == key.image_id
                )
            )
        gone = await connection.execute(delete(evidence).where(evidence.c.captured_at < older_than))
    return gone.rowcount or 0


async def build_reason(engine: AsyncEngine, *, region: str, image_id: str) -> str | None:
    """The Image Builder reason the image's latest build recorded (from GetImage, when its state changed), else
    the image's own (a build first seen ended has no build row)."""
    async with engine.connect() as connection:
        reason = (
            await connection.execute(
                select(builds.c.imagebuilder_status_reason)
                .where(builds.c.region == region, builds.c.image_id == image_id)
                .order_by(builds.c.start_time.desc())
                .limit(1)
            )
        ).scalar()
        if not reason:
            reason = (
                await connection.execute(
                    select(images.c.imagebuilder_status_reason).where(
                        images.c.region == region, images.c.image_id == image_id
                    )
                )
            ).scalar()
    return str(reason) if reason else None
