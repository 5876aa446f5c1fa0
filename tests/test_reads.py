"""Bounded reads: a statement past its bound is stopped on both databases, answered 503, and the pool stays usable."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.errors import QueryTimeout
from service.runtime import Runtime
from service.store import fleet
from service.store.reads import bounded

pytestmark = pytest.mark.asyncio


def endless(engine: AsyncEngine) -> str:
    if engine.dialect.name == "postgresql":
        return "SELECT pg_sleep(30)"
    return "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


async def test_a_statement_past_its_bound_is_stopped_and_the_connection_reused(runtime: Runtime) -> None:
    engine = runtime.engine
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"longer than 0\.3s"):
        async with bounded(engine, seconds=0.3) as connection:
            await connection.execute(text(endless(engine)))
    assert time.monotonic() - started < 5

    for _ in range(3):  # whichever pooled connection comes back, it works and is not interrupted again
        async with bounded(engine, seconds=5) as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1


async def test_other_errors_are_not_mistaken_for_a_timeout(runtime: Runtime) -> None:
    with pytest.raises(Exception) as caught:
        async with bounded(runtime.engine, seconds=5) as connection:
            await connection.execute(text("SELECT * FROM no_such_table"))
    assert not isinstance(caught.value, QueryTimeout)


async def test_a_history_query_past_its_bound_answers_503(
    runtime: Runtime, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.settings = dataclasses.replace(runtime.settings, history_query_seconds=0.2)

    async def slow(engine: AsyncEngine, **kwargs: Any) -> fleet.ListedPage:
        async with bounded(engine, seconds=kwargs["query_seconds"]) as connection:
            await connection.execute(text(endless(engine)))
        raise AssertionError("not reached")

    monkeypatch.setattr(fleet, "images_at", slow)
    response = await client.get(
        "/v3/images/custom", params={"imageStatus": "AVAILABLE", "at": datetime.now(UTC).isoformat()}
    )

    assert response.status_code == 503
    assert response.json() == {
        "message": "the query took longer than 0.2s; ask for a narrower window or fewer rows"
    }
    assert runtime.metrics.history_timeouts == 1
