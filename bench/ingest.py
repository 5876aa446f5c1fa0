"""In-process write paths: apply throughput on SQLite and PostgreSQL, and one reconcile pass over moto."""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from bench import seed
from bench.fake import TimedFakeAws
from service.aws import Aws
from service.demo.fakeaws import FakeAws
from service.ingest.reconciler import Reconciler
from service.settings import Settings
from service.store import db, tables
from service.store.cache import Cache

PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class ApplyRun:
    backend: str
    batch: int
    changes: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.changes / self.seconds


async def _pg_admin(statement: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh, migrated PostgreSQL database, dropped on the way out whatever happened."""
    name = f"statuscache_bench_{secrets.token_hex(4)}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
        await db.migrate(url)
        yield url
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _apply(url: str, *, backend: str, batch: int, images: int, steps: int) -> ApplyRun:
    changes = seed.build_lifecycle(seed.synthetic(images, prefix=f"ingest{batch}"), steps=steps)
    engine = db.create_engine(Settings(database_url=url))
    try:
        cache = Cache(engine)
        started = time.perf_counter()
        for start in range(0, len(changes), batch):
            await cache.apply_many(changes[start : start + batch])
        seconds = time.perf_counter() - started
        async with engine.connect() as connection:
            stored = int((await connection.execute(select(func.count()).select_from(tables.images))).scalar_one())
    finally:
        await engine.dispose()
    if stored < images:
        raise RuntimeError(f"apply on {backend}: {stored} images stored, expected {images}")
    return ApplyRun(backend=backend, batch=batch, changes=len(changes), seconds=seconds)


async def apply_throughput(
    *, workdir: Path, batches: tuple[int, ...], images: int, rounds: int, steps: int = 5, postgres: bool = True
) -> list[ApplyRun]:
    """Changes per second through Cache.apply_many, `batch` changes per call as a consumer would hand them over.

    Every run starts from an empty, freshly migrated database; rounds alternate the batch sizes and backends.
    """
    runs = []
    for round_index in range(rounds):
        for batch in batches:
            path = workdir / f"ingest-{round_index}-{batch}.db"
            url = f"sqlite+aiosqlite:///{path}"
            await db.migrate(url)
            runs.append(await _apply(url, backend="sqlite", batch=batch, images=images, steps=steps))
            if postgres:
                async with postgres_database() as url:
                    runs.append(await _apply(url, backend="postgresql", batch=batch, images=images, steps=steps))
    return runs


@dataclass(frozen=True)
class ReconcilePass:
    seconds: float
    moto_seconds: float  # of which the fake AWS (in this process) spent answering
    aws_calls: int
    by_operation: dict[str, int]
    images_seen: int
    imagebuilder_lookups: int
    changed: int


@dataclass(frozen=True)
class ReconcileRun:
    amis: int
    settled_stacks: int
    building_stacks: int
    first: ReconcilePass
    steady: ReconcilePass

    @property
    def pages(self) -> int:
        """List calls of the steady pass (reconcile makes no single-image DescribeStacks/DescribeImages)."""
        ops = self.steady.by_operation
        return ops.get("cloudformation.DescribeStacks", 0) + ops.get("ec2.DescribeImages", 0)


def populate(fake: FakeAws, *, amis: int, settled: int, building: int) -> None:
    images = seed.image_ids(amis + settled + building, prefix="recon")
    for image_id in images[:amis]:
        fake.create_ami(region=seed.REGION, image_id=image_id)
    for index, image_id in enumerate(images[amis : amis + settled]):
        status, builder = ("CREATE_COMPLETE", "AVAILABLE") if index % 3 else ("ROLLBACK_COMPLETE", "FAILED")
        fake.create_image_stack(region=seed.REGION, image_id=image_id, status=status, imagebuilder_status=builder)
    for image_id in images[amis + settled :]:
        fake.create_image_stack(region=seed.REGION, image_id=image_id)


async def reconcile(
    fake: TimedFakeAws, *, workdir: Path, amis: int = 900, settled: int = 90, building: int = 10
) -> ReconcileRun:
    """A fresh cache, then two passes over moto holding amis + settled + building images: first, steady state.

    The caller has pointed this process's botocore at `fake` (AWS_ENDPOINT_URL).
    """
    fake.reset()
    populate(fake, amis=amis, settled=settled, building=building)
    url = f"sqlite+aiosqlite:///{workdir / 'reconcile.db'}"
    await db.migrate(url)
    settings = Settings(database_url=url, regions=(seed.REGION,))
    engine = db.create_engine(settings)
    aws = Aws()
    passes = []
    try:
        reconciler = Reconciler(
            cache=Cache(engine), aws=aws, settings=settings, metrics=aws.metrics, freshness=aws.freshness
        )
        for _ in range(2):
            fake.reset_calls()
            busy = fake.busy_seconds()
            started = time.perf_counter()
            report = await reconciler.run_pass(region=seed.REGION)
            seconds = time.perf_counter() - started
            calls = fake.calls
            passes.append(
                ReconcilePass(
                    seconds=seconds,
                    moto_seconds=fake.busy_seconds() - busy,
                    aws_calls=sum(calls.values()),
                    by_operation=dict(sorted(collections.Counter(calls).items())),
                    images_seen=report.images_seen,
                    imagebuilder_lookups=report.imagebuilder_lookups,
                    changed=report.changed,
                )
            )
    finally:
        await aws.close()
        await engine.dispose()
    return ReconcileRun(amis=amis, settled_stacks=settled, building_stacks=building, first=passes[0], steady=passes[1])
