"""Database outages: what a driver error means, how an outage is logged, and the database stopped under a
real server (503 with Retry-After on kept connections, memory served stale, few logs).

The server tests run against a private PostgreSQL (tests.conftest.PrivatePostgres), stopped and started by them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import exc as sa_exc

from service.api.app import create_app
from service.aws import Aws
from service.demo.fakeaws import FakeAws
from service.errors import DatabaseUnavailable
from service.freshness import Freshness
from service.metrics import Metrics
from service.runtime import Runtime
from service.settings import Settings
from service.store import db
from service.store.outage import DatabaseOutage
from tests.conftest import REGION, PrivatePostgres, serving


def sqlite_error(code: int) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("sqlite says no")
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


class PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        pytest.param(ConnectionRefusedError(111, "Connection refused"), True, id="refused"),
        pytest.param(TimeoutError(), True, id="connect-timeout"),
        pytest.param(socket.gaierror(-2, "Name or service not known"), True, id="dns"),
        pytest.param(sa_exc.TimeoutError("QueuePool limit reached"), True, id="pool-exhausted"),
        pytest.param(PgError("08006"), True, id="connection-failure"),
        pytest.param(PgError("57P01"), True, id="admin-shutdown"),
        pytest.param(PgError("57P03"), True, id="starting-up"),
        pytest.param(PgError("53300"), True, id="too-many-connections"),
        pytest.param(PgError("57014"), True, id="statement-timeout"),
        pytest.param(sa_exc.DBAPIError("SELECT 1", {}, PgError("08003")), True, id="wrapped-sqlstate"),
        pytest.param(sqlite_error(sqlite3.SQLITE_BUSY), True, id="sqlite-busy"),
        pytest.param(sqlite_error(sqlite3.SQLITE_IOERR | (3 << 8)), True, id="sqlite-ioerr-extended"),
        pytest.param(sqlite_error(sqlite3.SQLITE_CANTOPEN), True, id="sqlite-cantopen"),
        pytest.param(PgError("23505"), False, id="unique-violation"),
        pytest.param(PgError("42P01"), False, id="undefined-table"),
        pytest.param(sqlite_error(sqlite3.SQLITE_CONSTRAINT), False, id="sqlite-constraint"),
        pytest.param(sa_exc.DBAPIError("SELECT 1", {}, PgError("42601")), False, id="wrapped-syntax-error"),
        pytest.param(ValueError("a bug"), False, id="a-bug"),
        pytest.param(OSError(2, "No such file"), False, id="other-os-error"),
    ],
)
def test_what_a_driver_error_means(error: BaseException, unavailable: bool) -> None:
    assert isinstance(db.unavailable(error), DatabaseUnavailable) is unavailable


class FlakyEngine:
    """An engine whose first `failures` connections are refused."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[FlakyEngine]:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        yield self

    async def execute(self, statement: object) -> None:
        return None


@pytest.mark.asyncio
async def test_an_outage_is_one_line_a_summary_while_it_lasts_and_one_line_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    freshness = Freshness()
    outage = DatabaseOutage(
        FlakyEngine(failures=8),  # type: ignore[arg-type]
        metrics=metrics, freshness=freshness, probe_seconds=0.02, summary_seconds=0.06,
    )
    with caplog.at_level(logging.INFO, logger="service.store.outage"):
        for _ in range(50):
            outage.failed(DatabaseUnavailable("the database cannot be reached: refused"))
        outage.failed(DatabaseUnavailable("refused"), served_stale=True)
        assert outage.down and freshness.database_down
        for _ in range(200):
            if not outage.down:
                break
            await asyncio.sleep(0.01)
    await outage.close()

    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith("database unavailable: the database cannot be reached")
    assert 1 <= sum(message.startswith("database still unavailable") for message in messages) <= 3
    assert messages[-1].startswith("database available again") and "50 requests were answered 503" in messages[-1]
    assert len(messages) <= 5
    assert (metrics.database_outages, metrics.database_unavailable_answers, metrics.database_stale_answers) == (
        1, 50, 1
    )
    assert not freshness.database_down


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


@pytest.mark.slow
@pytest.mark.asyncio
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


@pytest.mark.slow
@pytest.mark.asyncio
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


@pytest.mark.slow
@pytest.mark.asyncio
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
