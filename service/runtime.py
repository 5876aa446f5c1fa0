"""The shared resources of one process (engine, AWS clients, cache, loops), opened and closed together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db
from service.aws import Aws
from service.cache import Cache
from service.lookup import Lookup
from service.presign import UrlSigner
from service.reconciler import Reconciler
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    aws: Aws
    cache: Cache
    lookup: Lookup
    signer: UrlSigner
    reconciler: Reconciler
    polling: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, *, engine: AsyncEngine, aws: Aws) -> Runtime:
        cache = Cache(engine)
        return cls(
            settings=settings,
            engine=engine,
            aws=aws,
            cache=cache,
            lookup=Lookup(cache=cache, aws=aws, settings=settings),
            signer=UrlSigner(
                aws, expires_seconds=settings.presign_expires_seconds, reuse_seconds=settings.presign_reuse_seconds
            ),
            reconciler=Reconciler(cache=cache, aws=aws, settings=settings),
        )

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        settings: Settings,
        *,
        poll: bool,
        background: list[Coroutine[Any, Any, None]] | None = None,
    ) -> AsyncIterator[Runtime]:
        """Prepare the schema, open clients, start the loops; close everything on exit."""
        if settings.is_sqlite:
            # The embedded default migrates itself; a shared database is migrated by an operator.
            await db.migrate(settings.database_url)
        engine = db.create_engine(settings)
        aws = Aws()
        runtime = cls.build(settings, engine=engine, aws=aws)
        try:
            await db.check_schema(engine)
            if poll:
                runtime.start(runtime.reconciler.run(stop=runtime.stop), name="reconciler")
            for coroutine in background or ():
                runtime.start(coroutine, name="background")
            runtime.polling = poll
            yield runtime
        finally:
            await runtime.close()

    def start(self, coroutine: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_log_crash)
        self.tasks.append(task)

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.aws.close()
        await self.engine.dispose()

    async def readiness(self) -> dict[str, bool]:
        checks = {"database": False, "schema": False}
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            checks["database"] = True
            checks["schema"] = await db.schema_is_current(self.engine)
        except Exception as exc:  # readiness reports, it does not raise
            log.warning("readiness check failed: %s", exc)
        if self.polling:
            checks["first_reconcile"] = self.reconciler.first_pass_done.is_set()
        return checks


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s crashed", task.get_name(), exc_info=task.exception())
