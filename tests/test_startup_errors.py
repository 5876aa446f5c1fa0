"""Start-up mistakes an operator can make: one line on stderr naming it and the fix, a documented exit status.

Through the CLI, as an operator meets them (`python -m service ...`). PostgreSQL's cases run against the local
server; its trust authentication accepts any password, so "wrong credentials" is tested as a role that does
not exist (SQLSTATE 28000, the same refusal path as a wrong password's 28P01).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.errors import ConfigurationError, SchemaError
from service.store import db
from tests.conftest import BACKENDS, PG_ADMIN_URL, _pg_admin, _pg_database_url, free_port

PASSWORD = "s3cret-never-shown"
CONFIGURATION = 2
UNREACHABLE = 75
STARTUP_FAILED = 3
PG_HOST = PG_ADMIN_URL.partition("@")[2].partition("/")[0]
PG_USER = PG_ADMIN_URL.partition("://")[2].partition("@")[0].partition(":")[0]


def needs_postgres(test: Any) -> Any:
    skip = pytest.mark.skipif("postgresql" not in BACKENDS, reason="STATUSCACHE_TEST_BACKENDS leaves it out")
    return pytest.mark.postgresql(skip(test))


def statuscache(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        # AWS is configured (never reached): the database checks come after the AWS one.
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "service", *args], env=environment, capture_output=True, text=True, timeout=60
    )


def command(name: str) -> tuple[str, ...]:
    """The command line of `name`: serve on a free port (serve-workers: with two workers), sync as one pass, the
    others as they are."""
    return {
        "serve": ("serve", "--port", str(free_port())),
        "serve-workers": ("serve", "--port", str(free_port()), "--workers", "2"),
        "sync": ("sync", "--once"),
    }.get(name, (name,))


def assert_one_line(result: subprocess.CompletedProcess[str], *, status: int, says: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert 1 <= len(lines) <= 5, result.stderr
    assert lines[-1].startswith("statuscache: ")
    assert says in lines[-1], lines[-1]
    assert PASSWORD not in result.stderr


@pytest.fixture
def pg_database() -> Iterator[str]:
    """An empty PostgreSQL database of its own (nothing migrated), dropped afterwards."""
    name = f"statuscache_startup_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_database_url(name)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def set_revision(url: str, revision: str) -> None:
    await db.migrate(url)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        await engine.dispose()


URL_CASES = [
    pytest.param(
        "mysql://app:" + PASSWORD + "@db.example/cache",
        "'mysql' databases are not supported",
        CONFIGURATION,
        id="unsupported-scheme",
    ),
    pytest.param("sqlite:////nonexistent-dir/sub/statuscache.db", "does not exist", CONFIGURATION, id="sqlite-no-dir"),
    # /proc refuses new files even to root (a chmod would not stop root).
    pytest.param(
        "sqlite:////proc/statuscache.db", "cannot be opened for writing", CONFIGURATION, id="sqlite-unwritable"
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["migrate", "serve", "serve-workers", "sync"])
@pytest.mark.parametrize(("url", "says", "status"), URL_CASES)
def test_a_bad_database_url_is_one_line_and_a_documented_status(name: str, url: str, says: str, status: int) -> None:
    assert_one_line(statuscache("--database-url", url, *command(name)), status=status, says=says)


@pytest.mark.slow
@needs_postgres
@pytest.mark.parametrize("name", ["migrate", "serve", "poll"])
def test_a_refused_postgres_port_is_unreachable_with_the_password_hidden(name: str) -> None:
    url = f"postgresql://{PG_USER}:{PASSWORD}@127.0.0.1:{free_port()}/statuscache"
    result = statuscache("--database-url", url, *command(name))
    assert_one_line(result, status=UNREACHABLE, says="cannot reach the database")
    assert f"{PG_USER}:***@127.0.0.1" in result.stderr


@pytest.mark.slow
@needs_postgres
@pytest.mark.parametrize("name", ["migrate", "serve"])
def test_a_postgres_database_that_does_not_exist_says_create_it(name: str) -> None:
    url = f"postgresql://{PG_USER}:{PASSWORD}@{PG_HOST}/no_such_db_{secrets.token_hex(4)}"
    assert_one_line(
        statuscache("--database-url", url, *command(name)), status=CONFIGURATION, says="createdb no_such_db_"
    )


@pytest.mark.slow
@needs_postgres
@pytest.mark.parametrize("name", ["migrate", "serve"])
def test_credentials_postgres_refuses_say_so(name: str) -> None:
    url = f"postgresql://nobody_{secrets.token_hex(4)}:{PASSWORD}@{PG_HOST}/postgres"
    result = statuscache("--database-url", url, *command(name))
    assert_one_line(result, status=CONFIGURATION, says="refused these credentials")


@pytest.mark.slow
@needs_postgres
def test_serve_on_an_unmigrated_postgres_says_run_migrate(pg_database: str) -> None:
    result = statuscache("--database-url", pg_database, *command("serve"))
    assert_one_line(result, status=CONFIGURATION, says="run `statuscache migrate`")


def _future_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'statuscache.db'}"
    else:
        url = request.getfixturevalue("pg_database")
    asyncio.run(set_revision(url, "9999_from_the_future"))
    return url


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["migrate", "serve"])
def test_a_schema_from_a_newer_release_is_not_migrated_or_served(
    backend: str, name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _future_database(backend, tmp_path, request)
    result = statuscache("--database-url", url, *command(name))
    assert_one_line(result, status=CONFIGURATION, says="this database was migrated by a newer statuscache")


@pytest.mark.slow
def test_log_level_debug_adds_the_traceback_and_keeps_the_status() -> None:
    result = statuscache("--database-url", "sqlite:////nonexistent-dir/x.db", "--log-level", "DEBUG", "migrate")
    assert result.returncode == CONFIGURATION
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("statuscache: the SQLite database")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "workers"])
def test_an_address_in_use_is_uvicorns_startup_failure(tmp_path: Path, workers: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        database = f"sqlite:///{tmp_path / 'statuscache.db'}"
        result = statuscache("--database-url", database, "serve", "--port", str(port), *workers)
    assert result.returncode == STARTUP_FAILED, result.stderr
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    if workers:
        # Found before any worker started: the one line, naming the address.
        assert_one_line(result, status=STARTUP_FAILED, says=f"cannot listen on 127.0.0.1:{port}: address already")
        assert "worker" not in result.stderr


def test_invalid_tokens_and_subscriptions_files_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("subscriptions: [nonsense\n")
    database = f"sqlite:///{tmp_path / 'statuscache.db'}"
    for variable, says in [
        ("STATUSCACHE_API_TOKENS_FILE", "line 1"),
        ("STATUSCACHE_SUBSCRIPTIONS_FILE", "not valid TOML"),
    ]:
        result = statuscache("--database-url", database, *command("serve"), env={variable: str(bad)})
        assert_one_line(result, status=CONFIGURATION, says=says)
    missing = statuscache(
        "--database-url", database, *command("serve"), env={"STATUSCACHE_API_TOKENS_FILE": str(tmp_path / "none")}
    )
    assert_one_line(missing, status=CONFIGURATION, says="cannot read")


SCHEMA_TABLE = [
    # (current, head, known, what it says)
    ("0007", "0007", {"0007"}, None),
    (None, "0007", {"0007"}, "run `statuscache migrate`"),
    ("0006", "0007", {"0006", "0007"}, "run `statuscache migrate`"),
    ("9999", "0007", {"0006", "0007"}, "migrated by a newer statuscache"),
]


@pytest.mark.parametrize(("current", "head", "known", "says"), SCHEMA_TABLE)
def test_schema_problem(current: str | None, head: str, known: set[str], says: str | None) -> None:
    problem = db.schema_problem(current, head=head, known=frozenset(known))
    if says is None:
        assert problem is None
    else:
        assert isinstance(problem, SchemaError)
        assert says in str(problem)


def test_check_sqlite_location_names_the_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    with pytest.raises(ConfigurationError, match=str(missing)):
        db.check_sqlite_location(f"sqlite+aiosqlite:///{missing}/statuscache.db")
    db.check_sqlite_location(f"sqlite+aiosqlite:///{tmp_path}/statuscache.db")
    db.check_sqlite_location("sqlite+aiosqlite:///:memory:")
