"""The cache as the rest of the service sees it: one object over the store's repositories, opened and closed once.

Reads are service.store.images, what reconciliation knows service.store.known, applying changes
service.store.changes, de-duplication service.store.processed, build derivation service.store.builds;
every write goes through the one Writer (service.store.writer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.models import Change
from service.domain.rows import ApplyResult
from service.store import builds, known, listings, processed
from service.store.changes import Changes, Listener
from service.store.db import sqlite_direct_for
from service.store.images import Images
from service.store.known import Known
from service.store.poison import Poison
from service.store.writer import Writer

__all__ = ["Cache", "Known", "Listener", "Poison"]


class Cache:
    """Reads and writes image records. Listeners hear about every committed batch of results.

    A database that cannot answer surfaces from its methods as DatabaseUnavailable (service.store.db.unavailable).
    `retry_seconds` is how long after a look fails (or a recheck is owed) it is first tried again.
    """

    def __init__(self, engine: AsyncEngine, *, retry_seconds: float = 1.0) -> None:
        self.engine = engine
        self.retry_seconds = retry_seconds
        # SQLite without aiosqlite's hop per statement (None on PostgreSQL, or an in-memory database).
        self._sqlite = sqlite_direct_for(engine)
        self.writer = Writer(engine, direct=self._sqlite)
        self.images = Images(engine, direct=self._sqlite)
        self.changes = Changes(self.writer, retry_seconds=retry_seconds)
        # The repositories' own methods: a call through the facade costs no extra frame on the hot paths.
        self.read_now = self.images.read_now
        self.data_version = self.images.data_version
        self.read = self.images.read
        self.read_parts = self.images.read_parts
        self.image_for = self.images.image_for
        self.image_by_lower_id = self.images.image_by_lower_id
        self.apply_many = self.changes.apply_many
        self.subscribe = self.changes.subscribe

    @property
    def on_recheck_owed(self) -> Callable[[], None] | None:
        """Called (on the event loop) after a commit that left a recheck owed: the rechecker's wake-up."""
        return self.changes.on_recheck_owed

    @on_recheck_owed.setter
    def on_recheck_owed(self, callback: Callable[[], None] | None) -> None:
        self.changes.on_recheck_owed = callback

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()

    async def apply(self, change: Change) -> ApplyResult:
        return (await self.apply_many([change]))[0]

    async def listed(self, *, region: str, at: datetime) -> None:
        """A reconcile pass that began at `at` listed `region` whole (service.store.listings)."""
        await listings.record(self.writer, region=region, at=at)

    async def listings(self, regions: Sequence[str]) -> dict[str, listings.Listing]:
        return await listings.read(self.engine, regions)

    async def known(self, *, region: str) -> dict[str, Known]:
        return await known.known(self.engine, region=region)

    async def seen_events(self, event_ids: Sequence[str]) -> set[str]:
        return await processed.seen(self.engine, event_ids)

    async def derive_builds(self) -> int:
        """Derive the builds of every image marked since the last call (service.store.builds); returns how many."""
        return await builds.derive_marked(self.writer)
