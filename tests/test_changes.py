"""The change stream (GET /v3/image-changes) end to end: exactly once and in order, whatever the writers do."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text

from service.api.app import create_app
from service.aws import Aws
from service.demo.fakeaws import FakeAws
from service.domain.models import Change, ConfigLocation, Observed, Source, StackInfo
from service.runtime import Runtime
from service.settings import Settings
from service.store import db
from tests.conftest import REGION, serving

pytestmark = pytest.mark.asyncio

T = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def stack_change(image_id: str, status: str, *, at: datetime) -> Change:
    info = StackInfo(
        name=image_id,
        stack_id=f"arn:aws:cloudformation:{REGION}:123456789012:stack/{image_id}/1",
        status=status,
        creation_time=T,
        tags=(("parallelcluster:image_id", image_id), ("parallelcluster:version", "3.9.0")),
    )
    return Change(
        region=REGION, image_id=image_id, source=Source.RECONCILE, observed_at=at,
        stack=Observed(at, info), ami=Observed(at, None),
        config=Observed(at, ConfigLocation(bucket="b", key=f"{image_id}/image-config.yaml", available=True)),
    )


async def sse_ids(response: httpx.Response) -> AsyncIterator[int]:
    """The `id:` of each event of a stream, as they arrive."""
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            yield int(line[4:])


# On PostgreSQL a transaction that took a sequence number may commit after one that took a later number.
# This trigger makes that certain: a revision of a `slow-` image waits before its transaction commits.
SLOW_COMMIT = (
    "CREATE OR REPLACE FUNCTION statuscache_test_slow_commit() RETURNS trigger AS $$ "
    "BEGIN IF NEW.image_id LIKE 'slow-%' THEN PERFORM pg_sleep(0.3); END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
    "CREATE TRIGGER statuscache_test_slow_commit AFTER INSERT ON revisions "
    "FOR EACH ROW EXECUTE FUNCTION statuscache_test_slow_commit()",
)
NO_SLOW_COMMIT = (
    "DROP TRIGGER IF EXISTS statuscache_test_slow_commit ON revisions",
    "DROP FUNCTION IF EXISTS statuscache_test_slow_commit()",
)


async def execute(runtime: Runtime, statements: tuple[str, ...]) -> None:
    async with runtime.engine.begin() as connection:
        for statement in statements:
            await connection.execute(text(statement))


async def test_racing_writers_never_make_the_stream_skip_a_revision(settings: Settings, aws_state: FakeAws) -> None:
    tuned = dataclasses.replace(settings, sse_poll_seconds=0.05)
    runtimes = [Runtime.build(tuned, engine=db.create_engine(tuned), aws=Aws()) for _ in range(4)]
    streamer, writers = runtimes[0], runtimes[1:]
    postgres = not tuned.is_sqlite
    try:
        if postgres:
            await execute(streamer, SLOW_COMMIT)
        async with serving(create_app(tuned, runtime=streamer)) as base:
            async with httpx.AsyncClient(base_url=base, timeout=20) as http:
                async with http.stream("GET", "/v3/image-changes", headers={"Last-Event-ID": "0"}) as response:
                    assert response.status_code == 200
                    received: list[int] = []

                    async def follow() -> None:
                        async for seq in sse_ids(response):
                            received.append(seq)

                    reader = asyncio.create_task(follow())

                    async def write(writer: Runtime, index: int) -> list[int]:
                        # One writer keeps committing slowly; the others commit fast around it.
                        seqs = []
                        for step in range(6):
                            kind = "slow" if index == 0 else "fast"
                            at = T + timedelta(seconds=step)
                            result = await writer.cache.apply(stack_change(f"{kind}-{index}-{step}", "CREATE_IN_PROGRESS", at=at))
                            assert result.seq is not None
                            seqs.append(result.seq)
                            await asyncio.sleep(0.02)
                        return seqs

                    written = await asyncio.gather(*(write(writer, index) for index, writer in enumerate(writers)))
                    committed = sorted(seq for seqs in written for seq in seqs)
                    # Long enough for a poll or two after the last commit.
                    deadline = asyncio.get_running_loop().time() + 3
                    while len(received) < len(committed) and asyncio.get_running_loop().time() < deadline:
                        await asyncio.sleep(0.05)
                    reader.cancel()
        assert received == committed, f"missing {sorted(set(committed) - set(received))}"
    finally:
        if postgres:
            await execute(streamer, NO_SLOW_COMMIT)
        for runtime in runtimes:
            await runtime.close()
