"""What `pip install .` gives: the package with its own schema, without the demo's dependencies, and a `serve`
that refuses to start without AWS. The slow tests build the wheel once and install it in a fresh venv."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from service import runner
from service.store import db

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What the Dockerfile copies into its build, and all a wheel is built from.
SOURCES = ("pyproject.toml", "README.md", "service", "migrations")
DEMO_ONLY = ("moto", "boto3", "werkzeug")


def test_every_package_under_service_is_listed_for_the_wheel() -> None:
    # The packages are listed (service.migrations lives outside service/), so a new one must be added there.
    on_disk = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "service").rglob("__init__.py")
        if "__pycache__" not in path.parts
    }
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert on_disk | {"service.migrations", "service.migrations.versions"} == listed
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"service.migrations": "migrations"}


def test_a_checkout_finds_its_migrations_by_import_in_the_repository() -> None:
    assert db.MIGRATIONS_DIR.resolve() == ROOT / "migrations"
    assert db.head_revision() is not None


def test_alembic_by_hand_from_the_repository_still_works(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'by-hand.db'}"
    monkeypatch.setenv("STATUSCACHE_DATABASE_URL", url)
    monkeypatch.chdir(ROOT)

    command.upgrade(Config("alembic.ini"), "head")

    assert revision_of(tmp_path / "by-hand.db") == db.head_revision()


def test_the_demo_dependencies_are_an_extra() -> None:
    project = PYPROJECT["project"]
    required = " ".join(project["dependencies"]).lower()
    for name in DEMO_ONLY:
        assert name not in required, f"{name} is a runtime dependency"
    demo = " ".join(project["optional-dependencies"]["demo"]).lower()
    assert all(name in demo for name in DEMO_ONLY), demo


def revision_of(database: Path) -> str | None:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    return rows[0][0] if len(rows) == 1 else None


# --- a regular install, from the built wheel -------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    workdir: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def no_aws_env(self, **extra: str) -> dict[str, str]:
        """Nothing for botocore to find: no AWS_* variables, an empty HOME, no shared files, no instance role."""
        home = self.workdir / "empty-home"
        home.mkdir(exist_ok=True)
        return {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.workdir / "missing" / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.workdir / "missing" / "credentials"),
            **extra,
        }

    def run(self, argv: list[str], *, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        # Run outside the checkout, so nothing can be imported from the source tree by accident.
        return subprocess.run(
            argv, env=env, cwd=self.workdir, capture_output=True, text=True, timeout=timeout, check=False
        )


def _pip(python: Path | str, *args: str, cwd: Path) -> None:
    # pip's own cache (HOME) is kept, so a second run downloads nothing.
    subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "--quiet", *args], cwd=cwd, check=True)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The wheel, built from a copy of the sources (never from stale build/ output), in a fresh venv."""
    scratch = tmp_path_factory.mktemp("wheel")
    source = scratch / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    dist = scratch / "dist"
    _pip(sys.executable, "wheel", "--no-deps", "--wheel-dir", str(dist), str(source), cwd=scratch)
    (wheel,) = dist.glob("statuscache-*.whl")
    venv = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    _pip(venv / "bin" / "python", "install", str(wheel), cwd=scratch)
    workdir = scratch / "work"
    workdir.mkdir()
    yield Installed(wheel=wheel, venv=venv, workdir=workdir)


@pytest.mark.slow
def test_wheel_carries_its_schema(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    versions = sorted(path.name for path in (ROOT / "migrations" / "versions").glob("*.py"))
    for name in ("env.py", "script.py.mako", *(f"versions/{version}" for version in versions)):
        assert f"service/migrations/{name}" in names, name
    # GET /openapi.json serves the document from the package.
    assert "service/api/openapi.json" in names
    # Nothing outside the package: no top-level migrations/ or tests/ in site-packages.
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"service"}, tops


@pytest.mark.slow
def test_plain_install_has_no_moto_or_boto3(installed: Installed) -> None:
    probe = installed.run(
        [
            str(installed.bin / "python"), "-c",
            "import importlib.util, json, sys; print(json.dumps({n: importlib.util.find_spec(n) is not None "
            "for n in sys.argv[1:]}))",
            *DEMO_ONLY,
        ],
        env=installed.no_aws_env(),
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == dict.fromkeys(DEMO_ONLY, False)


# Every module but the demo's (and the Alembic scripts, which are not imported), then: was the demo imported?
PRODUCTION_IMPORTS = """
import importlib, pkgutil, sys

def walk(path, prefix):
    for found in pkgutil.iter_modules(path, prefix):
        if not found.name.startswith(("service.demo", "service.migrations")):
            module = importlib.import_module(found.name)
            if found.ispkg:
                walk(module.__path__, found.name + ".")

walk(importlib.import_module("service").__path__, "service.")
print(sorted(name for name in sys.modules if name.startswith("service.demo")))
"""


@pytest.mark.slow
def test_plain_install_imports_every_production_module_without_the_demo(installed: Installed) -> None:
    imported = installed.run([str(installed.bin / "python"), "-c", PRODUCTION_IMPORTS], env=installed.no_aws_env())

    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "[]"


@pytest.mark.slow
def test_plain_install_migrates_a_database_to_head_from_its_own_schema(installed: Installed) -> None:
    database = installed.workdir / "migrated.db"
    env = installed.no_aws_env(STATUSCACHE_DATABASE_URL=f"sqlite+aiosqlite:///{database}")

    migrated = installed.run([str(installed.bin / "statuscache"), "migrate"], env=env)

    assert migrated.returncode == 0, migrated.stderr
    assert revision_of(database) == db.head_revision()
    where = installed.run(
        [str(installed.bin / "python"), "-c", "import service.store.db as db; print(db.MIGRATIONS_DIR)"], env=env
    )
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), where


@pytest.mark.slow
def test_plain_install_serve_without_aws_exits_promptly_with_one_line(installed: Installed) -> None:
    database = installed.workdir / "never.db"
    env = installed.no_aws_env(STATUSCACHE_DATABASE_URL=f"sqlite+aiosqlite:///{database}")

    started = time.monotonic()
    served = installed.run([str(installed.bin / "statuscache"), "serve"], env=env, timeout=30)

    assert time.monotonic() - started < 20
    assert served.returncode == 2, (served.stdout, served.stderr)
    assert served.stdout == ""
    assert served.stderr == f"statuscache: {runner.NO_AWS}\n"
    assert not database.exists()


@pytest.mark.slow
def test_plain_install_demo_names_the_extra_it_needs(installed: Installed) -> None:
    demo = installed.run([str(installed.bin / "statuscache"), "demo"], env=installed.no_aws_env(), timeout=30)

    assert demo.returncode == 2, (demo.stdout, demo.stderr)
    (line,) = demo.stderr.splitlines()
    assert line.startswith("statuscache: the demo needs the [demo] extra (")
    assert line.endswith("pip install 'statuscache[demo]'")


@pytest.mark.slow
def test_plain_install_client_commands_need_no_aws_settings_or_database(installed: Installed) -> None:
    database = installed.workdir / "client-never.db"
    nowhere = f"http://127.0.0.1:{_closed_port()}"
    env = installed.no_aws_env(
        STATUSCACHE_URL=nowhere, STATUSCACHE_DATABASE_URL=f"sqlite+aiosqlite:///{database}", STATUSCACHE_PORT="bad"
    )

    asked = installed.run([str(installed.bin / "statuscache"), "describe-image", "-i", "some-image"], env=env)

    # A client of a service that is not there: pcluster's {"message"} and exit 1, not the service's refusal (2).
    assert asked.returncode == 1, (asked.stdout, asked.stderr)
    assert json.loads(asked.stdout)["message"].startswith(f"statuscache at {nowhere} could not be reached")
    assert not database.exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.slow
def test_plain_install_carries_the_status_boards_files(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    assert {f"service/api/board/{name}" for name in ("index.html", "board.js", "board.css")} <= names
    loaded = installed.run(
        [
            str(installed.bin / "python"), "-c",
            "from service.api.board import load_assets; print(sorted(load_assets()))",
        ],
        env=installed.no_aws_env(),
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "['board.css', 'board.js', 'index.html']"
