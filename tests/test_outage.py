"""The database stopped under a real server: 503 with Retry-After on kept connections, memory served stale, few logs.

Runs against a private PostgreSQL (tests.conftest.PrivatePostgres), stopped and started by the test.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from service.api.app import create_app
from service.aws import Aws
from service.demo.fakeaws import FakeAws
from service.errors import DatabaseUnavailable
from service.runtime import Runtime
from service.settings import Settings
from service.store import db
from tests.conftest import REGION, PrivatePostgres, serving

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


@pytest_asyncio.fixture
async def outage_runtime(private_postgres: PrivatePostgres, aws_state: FakeAws) -> AsyncIterator[Runtime]:
    settings = Settings(
        database_url=private_postgres.url,
        regions=(REGION,),
        live_lookups_per_second=1000.0,
        read_cache_seconds=0.2,
        db_pool_timeout_seconds=2.0,
    )
    runtime = Runtime.build(settings, engine=db.create_engine(settings), aws=Aws())
    try:
        yield runtime
    finally:
        private_postgres.start_if_stopped()
        await runtime.close()


def keep_alive_gets(base: str, path: str, count: int) -> list[bytes]:
    """`count` GETs on one TCP connection, one after the other; the raw responses (fails if the server closes)."""
    host, port = base.removeprefix("http://").split(":")
    answers = []
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        stream = sock.makefile("rb")
        for _ in range(count):
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: statuscache\r\n\r\n".encode())
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = stream.readline()
                assert line, "the server closed the connection"
                head += line
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            answers.append(head + stream.read(length))
    return answers


async def test_database_down_answers_503_with_retry_after_keeps_connections_and_logs_little(
    outage_runtime: Runtime, private_postgres: PrivatePostgres, aws_state: FakeAws, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = outage_runtime
    aws_state.create_image_stack(region=REGION, image_id="held-in-memory")
    aws_state.create_ami(region=REGION, image_id="never-read-here")
    await runtime.reconciler.run_pass(region=REGION)
    app = create_app(runtime.settings, runtime=runtime)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        held = await http.get("/v3/images/custom/held-in-memory")
        assert held.headers["x-cache"] == "HIT"

        private_postgres.stop()
        await asyncio.sleep(0.3)  # past the read cache: the next read goes to the database
        caplog.clear()
        with caplog.at_level(logging.INFO):
            refused = await asyncio.to_thread(keep_alive_gets, base, "/v3/images/custom/never-read-here", 3)
            stale = await http.get("/v3/images/custom/held-in-memory")
            load = [await http.get("/v3/images/custom/never-read-here") for _ in range(20)]
            # Every route that reads the database answers the same way.
            others = [
                await http.get("/v3/images/custom", params={"imageStatus": "AVAILABLE"}),
                await http.get("/v3/images/custom/held-in-memory/history"),
            ]
            ready = await http.get("/readyz")
        during = list(caplog.records)

        private_postgres.start()
        for _ in range(100):
            if not runtime.outage.down:
                break
            await asyncio.sleep(0.1)
        back = await http.get("/v3/images/custom/never-read-here")

    # Every refused read: a pcluster-shaped 503 asking to retry, on a connection the server kept open.
    assert len(refused) == 3
    for raw in refused:
        assert raw.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nretry-after: 5\r\n" in raw.lower()
        assert raw.endswith(b'{"message":"The cache\'s database is unavailable; retry later."}')
        assert b"connection: close" not in raw.lower()
    assert {response.status_code for response in load} == {503}
    for response in others:
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert response.json() == {"message": "The cache's database is unavailable; retry later."}
    # What this process read moments ago is served rather than a 503, and says what it is.
    assert stale.status_code == 200 and stale.json() == held.json()
    assert stale.headers["x-cache"] == "STALE" and stale.headers["x-cache-stale"] == "database-unavailable"
    assert ready.status_code == 503
    # The outage is one line, not a traceback per request.
    loud = [record for record in during if record.levelno >= logging.WARNING]
    assert [record.getMessage().split(":")[0] for record in loud if record.name.startswith("service")] == [
        "database unavailable"
    ], [record.getMessage() for record in loud]
    assert not [record for record in during if record.exc_info], "a traceback was logged"
    assert not [record for record in loud if record.name.startswith("uvicorn")]
    # ... and it ends with a line of its own once the probe finds the database again.
    assert not runtime.outage.down
    assert back.status_code == 200
    assert runtime.metrics.database_outages == 1
    assert runtime.metrics.database_unavailable_answers == 25
    assert runtime.metrics.database_stale_answers == 1


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("SELECT pg_terminate_backend(pg_backend_pid())", id="connection-killed"),
        pytest.param("SET statement_timeout = 1; SELECT pg_sleep(1)", id="statement-timeout"),
    ],
)
async def test_driver_errors_that_mean_unavailable_are_translated(
    private_postgres: PrivatePostgres, statement: str
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(private_postgres.url)
    try:
        async with engine.connect() as connection:
            with pytest.raises(Exception) as raised:
                for part in statement.split("; "):
                    await connection.execute(text(part))
    finally:
        await engine.dispose()
    assert isinstance(db.unavailable(raised.value), DatabaseUnavailable)


async def test_a_stopped_server_and_an_exhausted_pool_are_unavailable(private_postgres: PrivatePostgres) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(private_postgres.url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        held = await engine.connect()
        with pytest.raises(Exception) as exhausted:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        await held.close()
        private_postgres.stop()
        with pytest.raises(Exception) as refused:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    finally:
        private_postgres.start_if_stopped()
        await engine.dispose()
    assert isinstance(db.unavailable(exhausted.value), DatabaseUnavailable)
    assert isinstance(db.unavailable(refused.value), DatabaseUnavailable)
