"""Readiness means "can serve what it has"; AWS and reconciliation are reported beside it, never as not-ready."""

from __future__ import annotations

import asyncio
import gc

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from tests.conftest import OTHER_REGION, REGION

pytestmark = pytest.mark.asyncio


@pytest.mark.slow
async def test_ready_while_aws_is_down_and_no_reconcile_has_succeeded(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    runtime.polling = True  # a serving process whose poller cannot reach AWS
    aws_state.fail_all(status=503)
    try:
        await runtime.reconciler.loop().run_once()
        ready = await client.get("/readyz")
    finally:
        aws_state.recover()

    body = orjson.loads(ready.content)
    assert ready.status_code == 200 and body["ready"] is True
    assert body["checks"] == {"database": True, "schema": True}
    assert body["aws"][REGION]["reachable"] is False
    assert body["aws"][REGION]["lastError"].startswith("cloudformation.DescribeStacks")
    assert body["reconcile"]["firstPassDone"] is False
    assert set(body["reconcile"]["behindSince"]) == {REGION, OTHER_REGION}


@pytest.mark.slow
async def test_aws_reported_reachable_again_once_it_answers(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    runtime.polling = True
    aws_state.fail_all(status=503)
    await runtime.reconciler.loop().run_once()
    aws_state.recover()
    await runtime.reconciler.loop().run_once()

    body = (await client.get("/readyz")).json()

    assert body["aws"][REGION]["reachable"] is True and "lastError" not in body["aws"][REGION]
    assert body["aws"][REGION]["lastAnswer"] > body["aws"][REGION]["lastFailure"]
    assert body["reconcile"] == {"polling": True, "firstPassDone": True, "behindSince": {}}
    assert body["events"] == {"behindSince": {}}


@pytest.mark.slow
async def test_not_ready_when_the_database_cannot_answer(runtime: Runtime, client: httpx.AsyncClient) -> None:
    url = runtime.engine.url
    nowhere = url.set(database="/nonexistent/dir/statuscache.db") if url.get_backend_name() == "sqlite" else url.set(
        port=1
    )
    working, runtime.engine = runtime.engine, create_async_engine(nowhere)
    try:
        ready = await client.get("/readyz")
    finally:
        await runtime.engine.dispose()
        runtime.engine = working
        # The failed aiosqlite connection's worker thread answers its last call (the close the collector
        # makes) through this test's event loop: let it, while the loop still runs, rather than after the
        # test has closed it (which pytest then reports as an exception in a thread, at the next test).
        gc.collect()
        await asyncio.sleep(0.1)

    assert ready.status_code == 503
    assert orjson.loads(ready.content)["checks"] == {"database": False, "schema": False}
