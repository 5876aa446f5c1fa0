"""The images table as read: one record as served (straight from SQLite where it can), its parts, its owner by link.

A served record carries whether a recheck of it is owed (a row in rechecks): such a record is served stale.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, func, literal_column, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import records
from service.domain.models import CachedImage, ConfigLocation
from service.domain.rechecks import KIND_IMAGE
from service.store import db
from service.store.db import SqliteDirect
from service.store.tables import images, rechecks, revisions
from service.support.clock import as_utc

log = logging.getLogger(__name__)

# What a served record is made of, in the order `stored_image` takes it.
READ_COLUMNS = (
    images.c.version,
    images.c.exists,
    images.c.document,
    images.c.config_bucket,
    images.c.config_key,
    images.c.config_available,
    images.c.changed_at,
    images.c.confirmed_at,
)
# A revision is served as the record was at that version: when it was observed is both when it
# changed and when it was last confirmed.
REVISION_READ_COLUMNS = tuple(
    revisions.c.observed_at.label(column.name) if column.name in {"changed_at", "confirmed_at"}
    else revisions.c[column.name]
    for column in READ_COLUMNS
)
# The image's recheck owed, if any (the kind is inlined, so the direct reader's parameters stay region, image_id).
IMAGE_RECHECK = and_(
    rechecks.c.region == images.c.region,
    rechecks.c.kind == literal_column(f"'{KIND_IMAGE}'"),
    rechecks.c.subject == images.c.image_id,
)
# A served record, and whether a recheck of it is owed (the recheck's subject, NULL when none).
READ = (
    select(*READ_COLUMNS, rechecks.c.subject)
    .select_from(images.outerjoin(rechecks, IMAGE_RECHECK))
    .where(images.c.region == bindparam("region"), images.c.image_id == bindparam("image_id"))
)
# The same statement as text, for the direct SQLite reader (parameters: region, image_id).
SQLITE_READ = str(READ.compile(dialect=sqlite.dialect()))


def stored_image(*, region: str, image_id: str, columns: Sequence[Any]) -> CachedImage:
    """A record (or a revision) as served, from the values of READ_COLUMNS (or REVISION_READ_COLUMNS), in order,
    then (READ only) the recheck's subject.

    Times may be SQLite's text (the direct reader) or datetimes (the engine): both are UTC.
    """
    version, exists, document, bucket, key, available, changed_at, confirmed_at = columns[:8]
    return CachedImage(
        region=region,
        image_id=image_id,
        version=version,
        exists=bool(exists),
        document=document.encode() if document is not None else None,
        config=ConfigLocation(bucket=bucket, key=key, available=bool(available)),
        changed_at=as_utc(changed_at),
        confirmed_at=as_utc(confirmed_at),
        recheck_owed=len(columns) > 8 and columns[8] is not None,
    )


class Images:
    """Reads of stored images; each raises DatabaseUnavailable when the database cannot answer."""

    def __init__(self, engine: AsyncEngine, *, direct: SqliteDirect | None) -> None:
        self.engine = engine
        self._direct = direct

    def read_now(self, *, region: str, image_id: str) -> tuple[bool, CachedImage | None]:
        """(answered, record): a read without awaiting, where the database allows one (SQLite)."""
        if self._direct is None:
            return False, None
        try:
            direct = self._direct.read_one(SQLITE_READ, (region, image_id))
        except sqlite3.OperationalError as exc:
            log.debug("direct SQLite read failed (%s); reading through the engine", exc)
            return False, None
        if direct is None:
            return True, None
        return True, stored_image(region=region, image_id=image_id, columns=direct)

    def data_version(self) -> int | None:
        """A value that changes whenever the stored images may have changed (SqliteDirect.data_version), read
        without awaiting; None when the database cannot tell so cheaply (PostgreSQL) or is busy."""
        if self._direct is None:
            return None
        try:
            return self._direct.data_version()
        except sqlite3.OperationalError as exc:
            log.debug("SQLite's data_version could not be read (%s)", exc)
            return None

    async def read(self, *, region: str, image_id: str) -> CachedImage | None:
        """The record as served."""
        answered, record = self.read_now(region=region, image_id=image_id)
        if answered:
            return record
        async with db.translated(), self.engine.connect() as connection:
            row = (await connection.execute(READ, {"region": region, "image_id": image_id})).first()
        return stored_image(region=region, image_id=image_id, columns=row) if row is not None else None

    async def read_parts(self, *, region: str, image_id: str) -> records.Parts | None:
        async with db.translated(), self.engine.connect() as connection:
            text_value = (
                await connection.execute(
                    select(images.c.parts).where(images.c.region == region, images.c.image_id == image_id)
                )
            ).scalar_one_or_none()
        return records.decode_parts(text_value) if text_value is not None else None

    async def image_for(
        self, *, region: str, imagebuilder_arn: str | None = None, ami_id: str | None = None
    ) -> str | None:
        """The image id an Image Builder image or an AMI belongs to, by what the cache already knows."""
        condition = (
            images.c.imagebuilder_arn == imagebuilder_arn if imagebuilder_arn is not None
            else images.c.ami_id == ami_id
        )
        async with db.translated(), self.engine.connect() as connection:
            return (
                await connection.execute(
                    select(images.c.image_id).where(images.c.region == region, condition).limit(1)
                )
            ).scalar_one_or_none()

    async def image_by_lower_id(self, *, region: str, lower_id: str) -> str | None:
        async with db.translated(), self.engine.connect() as connection:
            return (
                await connection.execute(
                    select(images.c.image_id)
                    .where(images.c.region == region, func.lower(images.c.image_id) == lower_id)
                    .limit(1)
                )
            ).scalar_one_or_none()
