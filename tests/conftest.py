"""Shared fixtures: a real moto-backed AWS, and every database test on both SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio
import uvicorn
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from service.api.app import StatusCacheApp, create_app
from service.aws import Aws
from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from service.settings import Settings
from service.store import db
from service.store.tables import images

T = TypeVar("T")
REGION = "us-east-1"
OTHER_REGION = "eu-west-1"
PG_ADMIN_URL = os.environ.get("STATUSCACHE_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
BACKENDS = [b for b in os.environ.get("STATUSCACHE_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """A real uvicorn server for `app` on a free port, in this event loop; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


@pytest.fixture(scope="session")
def fake_aws() -> Iterator[FakeAws]:
    with FakeAws() as fake:
        previous = {name: os.environ.get(name) for name in _AWS_ENV}
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": fake.endpoint_url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": REGION,
            }
        )
        os.environ.pop("AWS_PROFILE", None)
        try:
            yield fake
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_PROFILE")


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus's promtool, from Debian's package."""
    path = shutil.which("promtool")
    assert path, "promtool is missing: scripts/ensure-prometheus installs it (make test runs it)"
    return path


@pytest.fixture
def aws_state(fake_aws: FakeAws) -> FakeAws:
    """The fake AWS, emptied and with counters at zero."""
    fake_aws.recover()
    fake_aws.reset()
    fake_aws.reset_calls()
    return fake_aws


# What a test needs beyond this process and SQLite, read from the fixtures it asks for (their closure): marked here,
# in one place, so `make test-fast` can leave these out by marker. Tests that start processes or wait fixed
# times are marked `slow` where they are written; a module that drives a tool without a fixture marks itself.
NEEDS_BY_FIXTURE = {
    "postgres_url": "postgresql",
    "empty_postgres_url": "postgresql",
    "private_postgres": "postgresql",
    "promtool": "prometheus",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        needs = {NEEDS_BY_FIXTURE[name] for name in fixtures & NEEDS_BY_FIXTURE.keys()}
        callspec = getattr(item, "callspec", None)
        # database_url asks for the PostgreSQL database at run time (getfixturevalue), by its parameter.
        if callspec is not None and callspec.params.get("database_url") == "postgresql":
            needs.add("postgresql")
        for marker in sorted(needs):
            item.add_marker(marker)


def pytest_sessionstart(session: pytest.Session) -> None:
    """The PostgreSQL half of the suite is never skipped: no server, no test run."""
    if "postgresql" not in BACKENDS:
        return
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except Exception as exc:
        raise pytest.UsageError(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}). `make test` starts the local server "
            "(scripts/ensure-postgres); set STATUSCACHE_TEST_PG_URL to use another one."
        ) from exc


def _pg_database_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def _pg_admin(statement: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, migrated to head, dropped at the end."""
    name = f"statuscache_test_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    url = _pg_database_url(name)
    asyncio.run(db.migrate(url))
    try:
        yield url
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    asyncio.run(db.migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a fresh SQLite file, or the run's PostgreSQL database truncated."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "statuscache.db"
        path.write_bytes(template.read_bytes())
        yield f"sqlite+aiosqlite:///{path}"
        return
    yield request.getfixturevalue("empty_postgres_url")


@pytest.fixture
def empty_postgres_url(postgres_url: str) -> str:
    """The run's PostgreSQL database with every table emptied."""

    async def truncate() -> None:
        engine = create_async_engine(postgres_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    text(
                        "TRUNCATE images, revisions, transitions, builds, builds_pending, processed_events, "
                        "poison_messages, rechecks, subscriptions, dead_letters, evidence, evidence_logs "
                        "RESTART IDENTITY"
                    )
                )
        finally:
            await engine.dispose()

    asyncio.run(truncate())
    return postgres_url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        regions=(REGION, OTHER_REGION),
        negative_ttl_seconds=30.0,
        live_lookups_per_second=1000.0,
    )


@pytest_asyncio.fixture
async def runtime(settings: Settings, aws_state: FakeAws) -> AsyncIterator[Runtime]:
    engine = db.create_engine(settings)
    built = Runtime.build(settings, engine=engine, aws=Aws())
    try:
        await mark_listed(built)
        yield built
    finally:
        await built.close()


@pytest_asyncio.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime.settings, runtime=runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://statuscache") as http:
        yield http



# When the runtimes tests build were first listed: before any moment a test's history is scripted at.
LISTED_SINCE = datetime(2000, 1, 1, tzinfo=UTC)


async def mark_listed(runtime: Runtime, *, since: datetime = LISTED_SINCE) -> None:
    """What reconcile passes leave behind: every configured region listed, first at `since` and last now (a
    runtime built without its poller has listed nothing, and its lists would answer 503)."""
    for region in runtime.settings.regions:
        await runtime.cache.listed(region=region, at=since)
        await runtime.cache.listed(region=region, at=datetime.now(UTC))


async def stored_images(runtime: Runtime) -> int:
    """How many image rows the cache holds."""
    async with runtime.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(images))).scalar_one())


class LiveService:
    """The app with its own lifespan (a runtime on SQLite, no poller), in uvicorn, in a thread of its own."""

    def __init__(self, settings: Settings) -> None:
        self.app: StatusCacheApp = create_app(settings, open_runtime=lambda s: Runtime.open(s, poll=False))
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, port=self.port, log_level="warning", lifespan="on"))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve()

        asyncio.run(serve())

    def __enter__(self) -> LiveService:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                self.run(mark_listed(self.app.state.runtime))
                return self
            self.thread.join(0.05)
        raise AssertionError("the service did not start")

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def begin_shutdown(self) -> None:
        runtime = self.app.state.runtime
        assert self.loop is not None
        self.loop.call_soon_threadsafe(runtime.begin_shutdown)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` in the service's event loop (its runtime lives there) and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)


@pytest.fixture
def live_service(tmp_path: Path, aws_state: FakeAws) -> Iterator[LiveService]:
    """The service with its own lifespan on SQLite, live in a thread: for clients that block."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'schemathesis.db'}",
        regions=(REGION, OTHER_REGION),
        live_lookups_per_second=10_000.0,
    )
    with LiveService(settings) as service:
        yield service


class PrivatePostgres:
    """A PostgreSQL server of our own (initdb into a temporary directory, a free port), for tests that stop it.

    Never the shared server at 127.0.0.1:5432, which every engineer's tests use.
    """

    BIN = Path(os.environ.get("STATUSCACHE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/statuscache"

    def _run(self, *command: str) -> None:
        # initdb and the server refuse to run as root: as the postgres user when we are root.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        self._run(str(self.BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()
        asyncio.run(self._create_database())
        asyncio.run(db.migrate(self.url))

    async def _create_database(self) -> None:
        engine = create_async_engine(self.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                await connection.execute(text("CREATE DATABASE statuscache"))
        finally:
            await engine.dispose()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._run(str(self.BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.directory / "log"),
                  "-w", "start")

    def stop(self) -> None:
        self._run(str(self.BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        try:
            self._run(str(self.BIN / "pg_ctl"), "-D", str(self.data), "status")
        except subprocess.CalledProcessError:
            return False
        return True

    def start_if_stopped(self) -> None:
        if not self.running():
            self.start()

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    directory = Path(tempfile.mkdtemp(prefix="statuscache-pg-"))
    server = PrivatePostgres(directory)
    server.create()
    try:
        yield server
    finally:
        server.destroy()
