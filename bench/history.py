"""python -m bench.history: the fleet's history at scale, on SQLite and on PostgreSQL.

A generated history of N images x M transitions (10,000 x 50 = 500,000 by default) over several years of
builds, written directly in SQL (transitions, the matching revisions, the images' current rows, and the
builds derived from the transitions by the service's own derivation), then `python -m service serve` on
each database, measured by wrk at one connection (so a figure is one request's latency, not a queue):

- the fleet at a moment: ListImages `at=` a random moment, first page (AVAILABLE; PENDING too, which
  has to look at every image because few match);
- a month of transitions, first page; the builds of a month, first page; the summary by version over a year;
- an NDJSON export of every transition, with the server's resident memory sampled throughout.

Every figure's target is a p99 under 100 ms; the export's is memory that stays flat (peak RSS within 32 MB
of the RSS before it). The AWS fake counts calls: a history query makes none.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from bench import ingest, servers, wrk
from bench.fake import TimedFakeAws
from bench.report import Row, table
from service.demo.fakeaws import ACCOUNT_ID
from service.domain import records
from service.domain.builds import Transition
from service.domain.models import AmiInfo, ImagebuilderState, Observed, StackInfo
from service.settings import Settings
from service.store import builds as build_store
from service.store import db, fleet
from service.store.tables import builds as builds_table
from service.store.tables import images as images_table
from service.store.tables import revisions as revisions_table
from service.store.tables import transitions as transitions_table

REGION = "us-east-1"
VERSIONS = ("3.6.0", "3.7.0", "3.7.2", "3.8.0", "3.9.0", "3.9.1", "3.10.0", "3.11.0")
OSES = ("alinux2", "alinux2023", "ubuntu2204", "rhel8", "rocky9")
ROLLBACK = "The following resource(s) failed to create: [ParallelClusterImage]. Rollback requested by user."
FAILURES = (
    "Image Build failed: Workflow Execution ID: 'wf-{id}' failed with reason: Step 'Build' failed. SSM execution "
    "'{id2}' failed with status = 'Failed' in state = 'BUILDING' and failure message = 'Step fails when it is "
    "Execution: ExecuteBash failed with status Failed.'",
    "Image Build failed: Workflow Execution ID: 'wf-{id}' failed with reason: Step 'Test' failed. SSM execution "
    "'{id2}' failed with status = 'TimedOut' in state = 'TESTING'",
    "Image Build failed: Workflow Execution ID: 'wf-{id}' failed with reason: Instance i-{hex} failed to launch: "
    "InsufficientInstanceCapacity",
    "Image Build failed: Workflow Execution ID: 'wf-{id}' failed with reason: Step 'Distribute' failed: AMI "
    "ami-{hex} could not be copied",
)
P99_TARGET_MS = 100.0
# Figure names stay within the table's column: hist.<db>.<figure>.<stat>.
SHORT = {"sqlite": "sqlite", "postgresql": "pg"}
RSS_GROWTH_TARGET_MB = 32.0


@dataclass(frozen=True)
class HistoryConfig:
    images: int = 10_000
    per_image: int = 50
    years: float = 3.0
    rounds: int = 3  # each figure measured once per round, figures alternating; its value is the median
    duration: float = 3.0  # seconds of wrk per figure and round
    paths: int = 200  # distinct questions per figure, rotated
    postgres: bool = True
    seed: int = 11


# --- the generated history ------------------------------------------------------------------------------

# A transition as generated: (happened_at, observed_at, source, exists, build_status, stack_status,
# stack_status_reason, imagebuilder_status, imagebuilder_status_reason, ami_state, stack_id, ami_id, version).
Step = tuple[datetime, datetime, str, bool, str | None, str | None, str | None, str | None, str | None, str | None,
             str | None, str | None, str]


@dataclass
class Generated:
    begin: datetime
    end: datetime
    transitions: list[tuple[Any, ...]]  # rows in the transitions table's column order, by time
    revisions: list[tuple[Any, ...]]
    images: list[dict[str, Any]]
    builds: list[dict[str, Any]]

    @property
    def counts(self) -> dict[str, int]:
        return {
            "transitions": len(self.transitions), "revisions": len(self.revisions), "images": len(self.images),
            "builds": len(self.builds),
        }


class _Image:
    """One image's generated life: builds one after another, each a run of status changes."""

    def __init__(self, index: int, rng: random.Random, *, begin: datetime, end: datetime, rows: int) -> None:
        self.image_id = f"hist-{OSES[index % len(OSES)]}-{index:05d}"
        self.rng = rng
        self.begin, self.end = begin, end
        self.steps: list[Step] = []
        kinds: list[str] = []
        needed = rows
        while needed > 0:
            kind = rng.choices(("complete", "failed", "deleted"), weights=(82, 15, 3))[0]
            kinds.append(kind)
            # the fewest rows each can have (the last build of an image is not followed by a deletion)
            needed -= {"complete": 9, "failed": 8, "deleted": 5}[kind]
        span = (end - begin).total_seconds() - 6 * 3600
        starts = sorted(begin + timedelta(seconds=rng.uniform(0, span)) for _ in kinds)
        for position in range(1, len(starts)):  # a day at least between two builds of one image
            starts[position] = max(starts[position], starts[position - 1] + timedelta(days=1))
        for number, (kind, start) in enumerate(zip(kinds, starts, strict=True)):
            following = starts[number + 1] if number + 1 < len(starts) else None
            self._build(number, kind, start.replace(microsecond=0), following)
        del self.steps[rows:]

    def _version(self, moment: datetime) -> str:
        fraction = (moment - self.begin) / (self.end - self.begin)
        return VERSIONS[min(int(fraction * len(VERSIONS)), len(VERSIONS) - 1)]

    def _build(self, number: int, kind: str, start: datetime, following: datetime | None) -> None:
        rng = self.rng
        version = self._version(start)
        slower = VERSIONS.index(version) * 2.5  # builds get slower with each release: a trend to find
        stack_id = f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/{self.image_id}/{number}"
        ami_id = f"ami-{rng.getrandbits(68):017x}"
        state: dict[str, Any] = {"stack": None, "reason": None, "ib": None, "ib_reason": None, "ami": None}
        moment = start

        def step(minutes: float, **change: Any) -> None:
            nonlocal moment
            moment = moment + timedelta(minutes=minutes)
            state.update(change)
            reconciled = rng.random() < 0.08
            happened = moment
            observed = moment + timedelta(seconds=rng.uniform(0.5, 3))
            if reconciled:  # seen by a pass up to five minutes later, stamped with the pass's time
                observed = moment + timedelta(seconds=rng.uniform(1, 300))
                happened = observed
            visible = state["stack"] is not None
            ami = state["ami"]
            exists = visible or ami is not None
            if ami is not None:
                build_status: str | None = "BUILD_COMPLETE"
            elif visible:
                build_status = {
                    "CREATE_IN_PROGRESS": "BUILD_IN_PROGRESS", "CREATE_COMPLETE": "BUILD_COMPLETE",
                    "ROLLBACK_IN_PROGRESS": "BUILD_FAILED", "ROLLBACK_COMPLETE": "BUILD_FAILED",
                    "DELETE_IN_PROGRESS": "DELETE_IN_PROGRESS",
                }[state["stack"]]
            else:
                build_status = None
            self.steps.append((
                happened, observed, "reconcile" if reconciled else "event", exists, build_status,
                state["stack"], state["reason"] if visible else None, state["ib"] if visible else None,
                state["ib_reason"] if visible else None, "AVAILABLE" if ami else None,
                stack_id if visible else None, ami if ami else None, version,
            ))

        step(0, stack="CREATE_IN_PROGRESS", reason="User Initiated")
        step(1, ib="PENDING")
        step(2, ib="BUILDING")
        building = rng.uniform(25, 55) + slower
        if kind == "deleted":
            step(building / 3, stack="DELETE_IN_PROGRESS", reason="User Initiated")
            step(4, stack=None, ib=None, ib_reason=None)
            return
        if kind == "failed":
            template = rng.choice(FAILURES)
            reason = template.format(
                id=_uuid(rng), id2=_uuid(rng), hex=f"{rng.getrandbits(64):016x}",
            )
            step(building / 2, ib="FAILED", ib_reason=reason)
            step(1, stack="ROLLBACK_IN_PROGRESS", reason=ROLLBACK)
            step(6, stack="ROLLBACK_COMPLETE")
            later = (following - timedelta(hours=2)) if following else moment + timedelta(days=2)
            step(max(10.0, (later - moment).total_seconds() / 60), stack="DELETE_IN_PROGRESS", reason="User Initiated")
            step(3, stack=None, ib=None, ib_reason=None, reason=None)
            return
        step(building, ib="TESTING")
        step(rng.uniform(10, 25) + slower / 2, ib="DISTRIBUTING")
        step(rng.uniform(4, 12), ib="AVAILABLE")
        step(2, stack="CREATE_COMPLETE", reason=None)
        step(1, ami=ami_id)
        step(30, stack=None, ib=None)
        if following is not None:
            step(max(10.0, (following - timedelta(hours=1) - moment).total_seconds() / 60), ami=None)


def _uuid(rng: random.Random) -> str:
    raw = f"{rng.getrandbits(128):032x}"
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def _document(image_id: str, step: Step) -> str | None:
    (_, _, _, exists, build_status, stack_status, reason, ib, ib_reason, _, stack_id, ami_id, version) = step
    if not exists:
        return None
    if ami_id is not None:
        document: dict[str, Any] = {
            "ec2AmiInfo": {"amiId": ami_id, "amiName": f"{image_id} {version}", "architecture": "x86_64",
                           "state": "AVAILABLE", "tags": []},
            "imageBuildStatus": "BUILD_COMPLETE", "imageId": image_id, "region": REGION, "version": version,
        }
    else:
        document = {
            "cloudformationStackArn": stack_id, "cloudformationStackStatus": stack_status,
            "cloudformationStackStatusReason": reason, "imageBuildStatus": build_status, "imageId": image_id,
            "imagebuilderImageStatus": ib, "imagebuilderImageStatusReason": ib_reason, "region": REGION,
            "version": version,
        }
    return orjson.dumps({k: v for k, v in document.items() if v is not None}, option=orjson.OPT_SORT_KEYS).decode()


def _parts(image_id: str, step: Step) -> str:
    """The image row's parts for its last step (what the cache would hold)."""
    (happened, _, _, _, _, stack_status, reason, ib, ib_reason, _, stack_id, ami_id, version) = step
    tags = (("parallelcluster:image_id", image_id), ("parallelcluster:version", version))
    stack = (
        StackInfo(name=image_id, stack_id=stack_id, status=stack_status, status_reason=reason,
                  creation_time=happened, tags=tags)
        if stack_id is not None and stack_status is not None else None
    )
    ami = AmiInfo(ami_id=ami_id, state="available", tags=tags) if ami_id is not None else None
    parts = records.Parts(
        stack=Observed(happened, stack), ami=Observed(happened, ami),
        imagebuilder=Observed(happened, ImagebuilderState(arn=None, status=ib, reason=ib_reason)) if ib else None,
    )
    return records.encode_parts(parts)


def generate(config: HistoryConfig, *, end: datetime) -> Generated:
    rng = random.Random(config.seed)
    begin = end - timedelta(days=365 * config.years)
    lives = [
        _Image(index, random.Random(rng.getrandbits(64)), begin=begin, end=end, rows=config.per_image)
        for index in range(config.images)
    ]
    built: list[dict[str, Any]] = []
    for life in lives:
        history = [Transition(position, *step[:3], *step[3:4], *step[5:10], step[12])
                   for position, step in enumerate(life.steps)]
        built += build_store.rows_for(REGION, life.image_id, history)
    ordered = sorted(
        ((step, life.image_id) for life in lives for step in life.steps), key=lambda item: (item[0][1], item[1])
    )
    transitions: list[tuple[Any, ...]] = []
    revisions: list[tuple[Any, ...]] = []
    last: dict[str, tuple[int, int, Step]] = {}
    versions: dict[str, int] = {}
    for number, (step, image_id) in enumerate(ordered, start=1):
        (happened, observed, source, exists, build_status, stack_status, reason, ib, ib_reason, ami_state,
         stack_id, ami_id, version) = step
        transitions.append((
            number, REGION, image_id, happened, observed, source, exists, build_status, stack_status, reason, ib,
            ib_reason, ami_state, stack_id, ami_id, version,
        ))
        versions[image_id] = versions.get(image_id, 0) + 1
        revisions.append((
            number, REGION, image_id, versions[image_id], exists, _document(image_id, step), None, None, False,
            observed, happened,
        ))
        last[image_id] = (number, versions[image_id], step)
    images: list[dict[str, Any]] = []
    for life in lives:
        seq, version, step = last[life.image_id]
        (happened, observed, _, exists, build_status, stack_status, reason, ib, ib_reason, ami_state, stack_id,
         ami_id, _) = step
        images.append({
            "region": REGION, "image_id": life.image_id, "version": version, "exists": exists,
            "document": _document(life.image_id, step), "config_bucket": None, "config_key": None,
            "config_available": False, "build_status": build_status, "stack_status": stack_status,
            "stack_status_reason": reason, "imagebuilder_status": ib, "imagebuilder_status_reason": ib_reason,
            "ami_state": ami_state, "stack_id": stack_id, "ami_id": ami_id, "imagebuilder_arn": None,
            "parts": _parts(life.image_id, step), "stack_as_of": happened, "ami_as_of": happened,
            "imagebuilder_as_of": happened if ib else None, "config_as_of": None,
            "created_at": life.steps[0][1], "changed_at": observed, "confirmed_at": observed, "seq": seq,
            "status_since": happened,
        })
    return Generated(begin, end, transitions, revisions, images, built)


# --- loading it, directly in SQL ------------------------------------------------------------------------

TRANSITION_COLUMNS = (
    "id", "region", "image_id", "happened_at", "observed_at", "source", "exists", "build_status", "stack_status",
    "stack_status_reason", "imagebuilder_status", "imagebuilder_status_reason", "ami_state", "stack_id", "ami_id",
    "pcluster_version",
)
REVISION_COLUMNS = (
    "seq", "region", "image_id", "version", "exists", "document", "config_bucket", "config_key", "config_available",
    "observed_at", "happened_at",
)
IMAGE_COLUMNS = tuple(column.name for column in images_table.columns)
BUILD_COLUMNS = tuple(column.name for column in builds_table.columns)
assert set(TRANSITION_COLUMNS) == {column.name for column in transitions_table.columns}
assert set(REVISION_COLUMNS) == {column.name for column in revisions_table.columns}


def _sqlite_value(value: Any) -> Any:
    # SQLAlchemy's SQLite DATETIME text: naive UTC with microseconds.
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, datetime) else value


def _insert_sql(table: str, columns: tuple[str, ...], marker: str = "?") -> str:
    names = ", ".join(f'"{name}"' for name in columns)
    return f'INSERT INTO {table} ({names}) VALUES ({", ".join(marker for _ in columns)})'


def load_sqlite(path: Path, data: Generated) -> None:
    url = f"sqlite+aiosqlite:///{path}"
    asyncio.run(db.migrate(url))
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        with connection:
            for table, columns, rows in _tables(data):
                connection.executemany(
                    _insert_sql(table, columns), ([_sqlite_value(value) for value in row] for row in rows)
                )
    finally:
        connection.close()


def _tables(data: Generated) -> Iterator[tuple[str, tuple[str, ...], Iterator[tuple[Any, ...]]]]:
    yield "transitions", TRANSITION_COLUMNS, iter(data.transitions)
    yield "revisions", REVISION_COLUMNS, iter(data.revisions)
    yield "images", IMAGE_COLUMNS, (tuple(row[c] for c in IMAGE_COLUMNS) for row in data.images)
    yield "builds", BUILD_COLUMNS, (tuple(row[c] for c in BUILD_COLUMNS) for row in data.builds)
    # Listed since the history began, as the passes that wrote it leave it (lists of a region never listed
    # answer 503, and at= before the first listing 404).
    yield "region_listings", ("region", "first_listed_at", "listed_at"), iter([(REGION, data.begin, data.end)])


async def load_postgres(url: str, data: Generated) -> None:
    import asyncpg

    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        for table, columns, rows in _tables(data):
            records_ = [
                tuple(value.astimezone(UTC).replace(tzinfo=None) if isinstance(value, datetime) else value
                      for value in row)
                for row in rows
            ]
            await connection.copy_records_to_table(table, records=records_, columns=list(columns))
        for table, column in (("transitions", "id"), ("revisions", "seq")):
            await connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), (SELECT max({column}) FROM {table}))"
            )
        # What autovacuum does to tables this size soon after they are loaded: statistics for the planner,
        # and the visibility map that lets index-only scans skip the heap.
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()


# --- the questions ----------------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def questions(data: Generated, *, count: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    span = (data.end - data.begin).total_seconds()

    def moment(margin_days: float = 0) -> datetime:
        usable = span - margin_days * 86400
        return data.begin + timedelta(seconds=rng.uniform(30 * 86400, usable))

    def path(route: str, **params: str) -> str:
        return f"{route}?{urlencode({'region': REGION, **params})}"

    months = [moment(31) for _ in range(count)]
    years = [data.begin + timedelta(seconds=rng.uniform(0, span - 366 * 86400)) for _ in range(count)]
    moments = [moment() for _ in range(count)]
    return {
        "fleet_at": [path("/v3/images/custom", imageStatus="AVAILABLE", at=_iso(m)) for m in moments],
        "fleet_pending": [path("/v3/images/custom", imageStatus="PENDING", at=_iso(m)) for m in moments],
        "trans_month": [
            path("/v3/image-transitions", since=_iso(m), until=_iso(m + timedelta(days=30))) for m in months
        ],
        "builds_month": [path("/v3/image-builds", since=_iso(m), until=_iso(m + timedelta(days=30))) for m in months],
        "summary_year": [
            path("/v3/image-builds/summary", since=_iso(y), until=_iso(y + timedelta(days=365)), groupBy="version")
            for y in years
        ],
    }


def check_answers(base: str, paths: dict[str, list[str]]) -> dict[str, str]:
    """One answer per figure, looked at: each must be a 200 with a full page (or a non-empty summary)."""
    seen: dict[str, str] = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for name, candidates in paths.items():
            response = client.get(candidates[0])
            if response.status_code != 200:
                raise RuntimeError(f"{name}: {candidates[0]} answered {response.status_code}: {response.text[:300]}")
            body = response.json()
            key = {"fleet_at": "images", "fleet_pending": "images", "trans_month": "transitions",
                   "builds_month": "builds", "summary_year": "groups"}[name]
            seen[name] = f"{len(body[key])} {key}" + (" + nextToken" if body.get("nextToken") else "")
            if name != "fleet_pending" and not body[key]:
                raise RuntimeError(f"{name}: {candidates[0]} answered no {key}")
    return seen


# --- the export and memory -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Export:
    rows: int
    bytes: int
    seconds: float
    rss_before_mb: float
    rss_peak_mb: float
    rss_after_mb: float


def export_all(service: servers.Process) -> Export:
    """Stream every transition as NDJSON, sampling the server's RSS every 10 ms meanwhile."""
    before = service.rss_mb()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, service.rss_mb())
            except (OSError, servers.ServerError):
                return
            done.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rows = size = 0
    started = time.perf_counter()
    try:
        with httpx.stream(
            "GET", service.base + f"/v3/image-transitions?region={REGION}",
            headers={"Accept": "application/x-ndjson"}, timeout=600,
        ) as response:
            if response.status_code != 200:
                raise RuntimeError(f"export answered {response.status_code}")
            for chunk in response.iter_raw():
                rows += chunk.count(b"\n")
                size += len(chunk)
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    return Export(rows, size, seconds, before, peak, service.rss_mb())


# --- the query plans --------------------------------------------------------------------------------------


async def plans(url: str, data: Generated) -> list[str]:
    """EXPLAIN of the very statements the store runs for each figure (captured as they execute)."""
    from sqlalchemy import event

    settings = Settings(database_url=url)
    engine = db.create_engine(settings)
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            captured.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    middle = data.begin + (data.end - data.begin) / 2
    month = fleet.TransitionFilter(region=REGION, since=middle, until=middle + timedelta(days=30))
    out: list[str] = []
    try:
        figures: list[tuple[str, Callable[[], Any]]] = [
            ("fleet at a moment", lambda: fleet.images_at(
                engine, region=REGION, image_status="AVAILABLE", at=middle, after=None, limit=100, query_seconds=30)),
            ("a month of transitions", lambda: fleet.transitions_page(
                engine, where=month, descending=False, after=None, upto=10**12, limit=100, query_seconds=30)),
            ("the builds of a month", lambda: build_store.page(
                engine, where=build_store.BuildFilter(region=REGION, since=middle, until=middle + timedelta(days=30)),
                descending=False, after=None, limit=100, query_seconds=30)),
            ("the summary by version over a year", lambda: build_store.summary(
                engine, where=build_store.BuildFilter(region=REGION, since=middle - timedelta(days=365),
                                                      until=middle), group_by="version", query_seconds=30)),
        ]
        for title, run in figures:
            captured.clear()
            await run()
            statements = [(s, p) for s, p in captured if "statement_timeout" not in s]
            async with engine.connect() as connection:
                for statement, parameters in statements:
                    explain = (
                        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " if engine.dialect.name == "postgresql"
                        else "EXPLAIN QUERY PLAN "
                    )
                    result = await connection.exec_driver_sql(explain + statement, parameters)
                    lines = [" ".join(str(cell) for cell in row[-1:]) for row in result.all()]
                    out.append(f"{engine.dialect.name}: {title}\n  " + "\n  ".join(lines))
    finally:
        await engine.dispose()
    return out


# --- the run ----------------------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Outcome:
    rows: list[Row]
    notes: list[str]
    plans: list[str]


def _measure(
    backend: str, url: str, data: Generated, config: HistoryConfig, fake: TimedFakeAws, workdir: Path
) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    paths = questions(data, count=config.paths, seed=config.seed)
    calls_before = fake.total_calls()
    with servers.start_serve(
        name=f"history-{backend}", database_url=url, aws_endpoint=fake.endpoint_url, log_dir=workdir,
        extra_env={"STATUSCACHE_HISTORY_DAYS": str(int(365 * config.years) + 30)},
    ) as service:
        seen = check_answers(service.base, paths)
        notes.append(f"{backend}: first answers looked at: " + "; ".join(f"{k} {v}" for k, v in seen.items()))
        scripts = {
            name: wrk.write_script(workdir, f"history-{backend}-{name}.lua", wrk.rotation_script(candidates, threads=1))
            for name, candidates in paths.items()
        }
        for script in scripts.values():
            wrk.run(service.base, script=script, duration=1, connections=1, threads=1)  # warm
        # Rounds of every figure in turn: a burst of other work on the machine spoils one round, not a figure.
        results: dict[str, list[wrk.WrkResult]] = {name: [] for name in scripts}
        for round_number in range(config.rounds):
            for name, script in scripts.items():
                result = wrk.run(service.base, script=script, duration=config.duration, connections=1, threads=1)
                results[name].append(result)
                progress(f"  {backend} round {round_number + 1}/{config.rounds} {name:<14} p50 {result.p50_ms:7.2f} ms"
                         f"  p99 {result.p99_ms:7.2f} ms  ({result.requests} requests)")
        for name, runs in results.items():
            p50 = statistics.median(run.p50_ms for run in runs)
            p99 = statistics.median(run.p99_ms for run in runs)
            figure = f"hist.{SHORT[backend]}.{name}"
            rows += [
                Row(f"{figure}.p50", p50, "ms"),
                Row(f"{figure}.p99", p99, "ms", target=f"< {P99_TARGET_MS:g} ms", ok=p99 < P99_TARGET_MS),
            ]
        notes.append(
            f"{backend} p99 per round: " + "; ".join(
                f"{name} {[round(run.p99_ms, 1) for run in runs]}" for name, runs in results.items()
            )
        )
        progress(f"  {backend} exporting every transition as NDJSON")
        exported = export_all(service)
        growth = exported.rss_peak_mb - exported.rss_before_mb
        expected = len(data.transitions)
        rows += [
            Row(f"hist.{SHORT[backend]}.export.rows", exported.rows, "rows", target=f"== {expected}",
                ok=exported.rows == expected),
            Row(f"hist.{SHORT[backend]}.export.rate", exported.rows / exported.seconds, "rows/s"),
            Row(f"hist.{SHORT[backend]}.export.rss_peak", exported.rss_peak_mb, "MB"),
            Row(f"hist.{SHORT[backend]}.export.rss_growth", growth, "MB", target=f"<= {RSS_GROWTH_TARGET_MB:g} MB",
                ok=growth <= RSS_GROWTH_TARGET_MB),
        ]
        notes.append(
            f"{backend} export: {exported.rows} rows, {exported.bytes / 1e6:.0f} MB in {exported.seconds:.1f}s; "
            f"server RSS {exported.rss_before_mb:.0f} MB before, {exported.rss_peak_mb:.0f} MB at peak, "
            f"{exported.rss_after_mb:.0f} MB after."
        )
    calls = fake.total_calls() - calls_before
    rows.append(Row(f"hist.{SHORT[backend]}.aws_calls", calls, "calls", target="== 0", ok=calls == 0))
    return rows, notes


def run(config: HistoryConfig, *, fake: TimedFakeAws, workdir: Path) -> Outcome:
    end = datetime.now(UTC).replace(microsecond=0)
    progress(f"history: generating {config.images} images x {config.per_image} transitions over {config.years:g} years")
    started = time.perf_counter()
    data = generate(config, end=end)
    progress(f"  generated {data.counts} in {time.perf_counter() - started:.1f}s")
    outcome = Outcome([], [
        f"History: {config.images} images x {config.per_image} transitions ({data.counts['transitions']} "
        f"transitions, {data.counts['revisions']} revisions, {data.counts['builds']} builds) from "
        f"{data.begin:%Y-%m-%d} to {data.end:%Y-%m-%d}, written directly in SQL; wrk -t1 -c1, {config.rounds} rounds "
        f"of {config.duration:g}s per figure (figures alternating; values are medians over rounds), rotating over "
        f"{config.paths} questions (random moments, months, years). The transitions' happened_at and observed_at "
        "differ as events and reconcile passes make them.",
    ], [])
    sqlite_path = workdir / "history.db"
    started = time.perf_counter()
    load_sqlite(sqlite_path, data)
    progress(f"  loaded SQLite in {time.perf_counter() - started:.1f}s ({sqlite_path.stat().st_size / 1e6:.0f} MB)")
    sqlite_url = f"sqlite+aiosqlite:///{sqlite_path}"
    outcome.plans += asyncio.run(plans(sqlite_url, data))
    rows, notes = _measure("sqlite", sqlite_url, data, config, fake, workdir)
    outcome.rows += rows
    outcome.notes += notes
    if config.postgres:
        outcome.rows += _postgres(config, data, fake, workdir, outcome)
    else:
        outcome.rows.append(Row("hist.pg", "n/a (--no-postgres)"))
    return outcome


def _postgres(
    config: HistoryConfig, data: Generated, fake: TimedFakeAws, workdir: Path, outcome: Outcome
) -> list[Row]:
    # Created and dropped by hand: an async context manager entered in one asyncio.run is finalized (and its
    # database dropped) when that loop closes.
    name = f"statuscache_history_{secrets.token_hex(4)}"
    url = ingest.PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name

    async def prepare() -> None:
        await db.migrate(url)
        started = time.perf_counter()
        await load_postgres(url, data)
        progress(f"  loaded PostgreSQL in {time.perf_counter() - started:.1f}s")
        outcome.plans.extend(await plans(url, data))

    asyncio.run(ingest._pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        asyncio.run(prepare())
        rows, notes = _measure("postgresql", url, data, config, fake, workdir)
        outcome.notes += notes
        return rows
    finally:
        asyncio.run(ingest._pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=HistoryConfig.images)
    parser.add_argument("--per-image", type=int, default=HistoryConfig.per_image)
    parser.add_argument("--rounds", type=int, default=HistoryConfig.rounds, help="rounds of every figure")
    parser.add_argument(
        "--duration", type=float, default=HistoryConfig.duration, help="seconds of wrk per figure and round"
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--plans", action="store_true", help="print the EXPLAIN of each figure's statements")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = dataclasses.replace(
        HistoryConfig(), images=args.images, per_image=args.per_image, rounds=max(1, args.rounds),
        duration=args.duration,
        postgres=not args.no_postgres,
    )
    wrk.ensure_wrk()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="statuscache-history-") as directory:
        fake = TimedFakeAws()
        fake.start()
        try:
            outcome = run(config, fake=fake, workdir=Path(directory))
        finally:
            fake.stop()
    print(f"load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print(table(outcome.rows))
    for note in outcome.notes:
        print(f"- {note}")
    if args.plans:
        print()
        print("\n\n".join(outcome.plans))
    missed = [row.figure for row in outcome.rows if row.ok is False]
    print(f"targets missed: {', '.join(missed) if missed else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
