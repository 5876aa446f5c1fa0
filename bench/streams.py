"""The change stream at dashboard scale: 10,000 idle clients on one process, next to the service as it was.

One `serve --no-poll` process (1,000 cached images, SQLite) and the lean clients of bench.sse_clients, in
several processes (2,500 each), so the load generator does not measure itself. Measured, in this order:

- RSS with no client, then with 10,000 connected (per client: the difference / 10,000);
- the server's CPU while they are connected and nothing changes, over one heartbeat period and more;
- delivery: a change written by the server itself (a describe of an image only AWS knows: a live lookup,
  stored) and one written by another replica (this process, straight into the database), each timed
  from the write to its arrival at every client (CLOCK_MONOTONIC is one clock for every process);
- cached describes (wrk, as the describe figures) with and without the 10,000 connected, in A B B A order;
- the same idle CPU and delivery at 500 clients against today's service (the commit before the tailer,
  BASELINE, extracted with `git archive` and run from a temporary directory) and against this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench import load, seed, servers, wrk
from bench.fake import TimedFakeAws
from bench.report import Row
from service.domain.models import Change, ConfigLocation, Observed, Source, StackInfo
from service.settings import Settings
from service.store import db
from service.store.cache import Cache

# The service as it was before the tailer: every client polled the revisions table itself.
BASELINE = "82537bc3a93005cfbdd9ad181e8bd9be5add86fe"
PATH = "/v3/image-changes"
CLIENTS_PER_PROCESS = 2500
HEARTBEAT_SECONDS = 15.0  # the service's default (STATUSCACHE_SSE_HEARTBEAT_SECONDS)
POLL_SECONDS = 1.0  # the service's default (STATUSCACHE_SSE_POLL_SECONDS)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def raise_fd_limit() -> None:
    """For a child process: as many open files as the system allows (the server holds one per client)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(process: servers.Process, seconds: float) -> float:
    """The share of one core the process used over `seconds` (100 = one core)."""
    before, started = cpu_seconds(process.pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(process.pid) - before) / (time.monotonic() - started) * 100


class Clients:
    """Stream clients in child processes (bench.sse_clients), connected on entry and closed on exit."""

    def __init__(
        self, *, port: int, count: int, per_process: int = CLIENTS_PER_PROCESS, path: str = PATH,
        headers: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self.count = count
        sizes = [per_process] * (count // per_process) + ([count % per_process] if count % per_process else [])
        sent = [argument for header in headers for argument in ("--header", header)]
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.sse_clients", "--port", str(port), "--count", str(size), "--path", path,
                 *sent],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=servers.REPO,
                preexec_fn=raise_fd_limit,
            )
            for size in sizes
        ]
        self.connected = 0
        try:
            for child in self.processes:
                connected = self._read(child)["connected"]
                assert isinstance(connected, int)
                self.connected += connected
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _read(child: subprocess.Popen[str]) -> dict[str, object]:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"stream client process {child.pid} exited with {child.wait()}")
        answer: dict[str, object] = json.loads(line)
        return answer

    def arrivals(self, since: float) -> list[float | None]:
        """For every client, when it received the first event at or after `since` (None: not yet)."""
        found: list[float | None] = []
        for child in self.processes:
            assert child.stdin is not None
            child.stdin.write(f"report {since}\n")
            child.stdin.flush()
            firsts = self._read(child)["firsts"]
            assert isinstance(firsts, list)
            found += [first[0] if first else None for first in firsts]
        return found

    def close(self) -> None:
        for child in self.processes:
            with contextlib.suppress(OSError, ValueError):
                assert child.stdin is not None
                child.stdin.write("close\n")
                child.stdin.flush()
        for child in self.processes:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Delivery:
    received: int
    clients: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def delivery(clients: Clients, *, write: Callable[[], float], settle: float) -> Delivery:
    """Write one change (`write` returns when it was written, monotonic) and time its arrival at each client."""
    written = write()
    time.sleep(settle)
    arrivals = clients.arrivals(written)
    latencies = sorted((at - written) * 1000 for at in arrivals if at is not None)
    if not latencies:
        return Delivery(0, clients.connected, float("nan"), float("nan"), float("nan"))
    return Delivery(
        received=len(latencies),
        clients=clients.connected,
        p50_ms=latencies[len(latencies) // 2],
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        max_ms=latencies[-1],
    )


def worst(deliveries: list[Delivery]) -> Delivery:
    """Of several probes, the one with the slowest p99 (every probe must reach every client)."""
    return max(deliveries, key=lambda d: (d.received < d.clients, d.p99_ms))


class Writes:
    """The changes the probes make: live lookups in the server (images only the fake AWS has), and writes of
    another replica straight into the server's database."""

    def __init__(self, fake: TimedFakeAws, *, prefix: str) -> None:
        self.fake = fake
        self.prefix = prefix
        self.count = 0

    def by_the_server(self, base: str) -> Callable[[], float]:
        self.count += 1
        image_id = f"{self.prefix}-local-{self.count}"
        self.fake.create_ami(region=seed.REGION, image_id=image_id)

        def write() -> float:
            # From just before the request: the live lookup (a few ms against moto) counts against delivery.
            started = time.monotonic()
            response = httpx.get(base + load.describe_path(image_id), timeout=30)
            if response.status_code != 200:
                raise RuntimeError(f"probe describe {image_id}: {response.status_code} {response.text[:200]}")
            return started

        return write

    def by_another_replica(self, database_url: str) -> Callable[[], float]:
        self.count += 1
        image_id = f"{self.prefix}-replica-{self.count}"

        def write() -> float:
            return asyncio.run(apply_one(database_url, image_id))

        return write


async def apply_one(database_url: str, image_id: str) -> float:
    """Store one new image as another replica would; returns when its transaction committed (monotonic)."""
    settings = Settings(database_url=database_url)
    engine = db.create_engine(settings)
    cache = Cache(engine)
    now = datetime.now(UTC)
    tags = (("parallelcluster:image_id", image_id), ("parallelcluster:version", seed.VERSION))
    change = Change(
        region=seed.REGION, image_id=image_id, source=Source.RECONCILE, observed_at=now,
        stack=Observed(now, StackInfo(image_id, f"arn:aws:cloudformation:{seed.REGION}:1:stack/{image_id}/1",
                                      "CREATE_IN_PROGRESS", now, tags)),
        ami=Observed(now, None),
        config=Observed(now, ConfigLocation(bucket=None, key=None, available=False)),
    )
    try:
        await cache.apply(change)
        return time.monotonic()
    finally:
        cache.close()
        await engine.dispose()


@contextlib.contextmanager
def baseline_tree(workdir: Path) -> Iterator[Path | None]:
    """Today's service (BASELINE) as a source tree to run with PYTHONPATH; None when git cannot provide it."""
    target = workdir / "baseline"
    archive = workdir / "baseline.tar"
    try:
        with archive.open("wb") as out:
            subprocess.run(
                ["git", "-C", str(servers.REPO), "archive", BASELINE, "service", "migrations"],
                stdout=out, stderr=subprocess.PIPE, check=True, timeout=60,
            )
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except (OSError, subprocess.SubprocessError) as exc:
        progress(f"streams: no baseline ({exc}); today's figures are skipped")
        yield None
        return
    # Installed, the migrations ship as service.migrations (pyproject's package-dir): the same, by hand.
    (target / "migrations").rename(target / "service" / "migrations")
    try:
        yield target
    finally:
        shutil.rmtree(target, ignore_errors=True)
        archive.unlink(missing_ok=True)


def start(
    *, name: str, database_url: str, fake: TimedFakeAws, workdir: Path, tree: Path | None = None,
    env: dict[str, str] | None = None,
) -> servers.Process:
    extra = {"STATUSCACHE_LIVE_LOOKUPS_PER_SECOND": "1000", **(env or {})}
    if tree is not None:
        extra["PYTHONPATH"] = str(tree)
    return servers.start_serve(
        name=name, database_url=database_url, aws_endpoint=fake.endpoint_url, log_dir=workdir, extra_env=extra,
        preexec_fn=raise_fd_limit, cwd=tree,
    )


def warm_up(process: servers.Process, writes: Writes) -> None:
    """Before anything is measured: one stream opened and closed (the tailer is running), and one live lookup
    (the server's AWS clients exist: the first one costs a second or two of loading botocore's models)."""
    with httpx.stream("GET", process.base + PATH, timeout=10) as response:
        next(response.iter_lines())
    writes.by_the_server(process.base)()
    time.sleep(1.0)


@dataclass(frozen=True)
class Config:
    clients: int = 10_000
    compared: int = 500  # clients in the side-by-side with today's service
    probes: int = 3
    connections: int = 32
    threads: int = 2


class StreamBench:
    def __init__(self, config: Config, *, workdir: Path, fake: TimedFakeAws) -> None:
        self.config = config
        self.workdir = workdir
        self.fake = fake
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.writes = Writes(fake, prefix=f"bench-stream-{os.getpid()}")

    def run(self) -> None:
        database = self.workdir / "streams.db"
        seed.seed_sqlite_sync(database, seed.synthetic(1000, prefix="stream"))
        url = f"sqlite+aiosqlite:///{database}"
        with start(name="streams", database_url=url, fake=self.fake, workdir=self.workdir) as service:
            self.at_scale(service, url)
            compared = self.compared(service, url)
        with baseline_tree(self.workdir) as tree:
            if tree is not None:
                empty = f"sqlite+aiosqlite:///{self.workdir / 'baseline.db'}"
                with start(name="baseline", database_url=empty, fake=self.fake, workdir=self.workdir,
                           tree=tree) as today:
                    self.today(today, empty, compared)

    def reads(self, service: servers.Process, script: Path, *, seconds: float) -> wrk.WrkResult:
        return wrk.run(
            service.base, script=script, duration=seconds, connections=self.config.connections,
            threads=self.config.threads,
        )

    def at_scale(self, service: servers.Process, database_url: str) -> None:
        config = self.config
        image_ids = [item.image_id for item in seed.synthetic(1000, prefix="stream")]
        load.describe_all(service.base, image_ids)
        script = wrk.write_script(
            self.workdir, "stream-reads.lua",
            wrk.rotation_script([load.describe_path(i) for i in image_ids], threads=config.threads),
        )
        warm_up(service, self.writes)
        wrk.run(service.base, script=script, duration=1, connections=config.connections)
        # Every read run spans a heartbeat period, so the heartbeats' cost is in the "with" figures.
        span = HEARTBEAT_SECONDS + 1
        rss_before = service.rss_mb()
        progress("streams: cached describes, no stream client")
        without = [self.reads(service, script, seconds=span)]
        progress(f"streams: connecting {config.clients} stream clients")
        started = time.monotonic()
        with Clients(port=service.port, count=config.clients) as clients:
            connect_seconds = time.monotonic() - started
            time.sleep(2.0)
            rss_after = service.rss_mb()
            progress(f"streams: {clients.connected} connected in {connect_seconds:.1f}s; idle CPU over {span:g}s")
            cpu = idle_cpu(service, span)
            progress("streams: cached describes with the clients connected (twice)")
            with_clients = [self.reads(service, script, seconds=span) for _ in range(2)]
            progress(f"streams: {config.probes} changes written by the server, then by another replica")
            local = [
                delivery(clients, write=self.writes.by_the_server(service.base), settle=2.0)
                for _ in range(config.probes)
            ]
            replica = [
                delivery(clients, write=self.writes.by_another_replica(database_url), settle=POLL_SECONDS + 2.0)
                for _ in range(config.probes)
            ]
            connected = clients.connected
        time.sleep(1.0)
        progress("streams: cached describes, clients gone")
        without.append(self.reads(service, script, seconds=span))
        service.check_alive()
        per_client_kb = (rss_after - rss_before) * 1000 / connected if connected else float("nan")
        self.rows += [
            Row("stream.clients", connected, "clients", target=f"== {config.clients}", ok=connected == config.clients),
            Row("stream.rss.before", rss_before, "MB"),
            Row("stream.rss.after", rss_after, "MB"),
            Row("stream.rss.per_client", per_client_kb, "KB", target="<= 10", ok=per_client_kb <= 10),
            Row("stream.idle.cpu", cpu, "% core", target="< 5", ok=cpu < 5),
        ]
        self._delivery_rows("stream.local", local, bound_ms=1000)
        self._delivery_rows("stream.replica", replica, bound_ms=1000 + POLL_SECONDS * 1000)
        self._reads_rows(without, with_clients)
        self.notes.append(
            f"Streams: {connected} clients in {len(clients.processes)} processes of bench.sse_clients (raw asyncio "
            f"sockets on uvloop, at most 100 handshakes in flight each), connected in {connect_seconds:.1f}s, all "
            "unfiltered (every change goes to every client). `stream.rss.per_client` is (RSS with them - RSS "
            "before) / clients. Delivery is timed from the write (for `local`, from just before the describe "
            "request whose live lookup stores the image; for `replica`, from the other writer's commit) to the "
            f"arrival at each client; the worst of {config.probes} probes is shown. Reads: wrk on 1,000 cached "
            f"describes for {span:g}s (a heartbeat period) each, without / with / with / without the clients: "
            + ", ".join(
                f"{run.rps:.0f} req/s p99 {run.p99_ms:.1f} ms" for run in (without[0], *with_clients, without[1])
            )
            + "."
        )

    def compared(self, service: servers.Process, database_url: str) -> tuple[float, Delivery]:
        count = self.config.compared
        progress(f"streams: {count} clients on this service")
        with Clients(port=service.port, count=count) as clients:
            time.sleep(2.0)
            cpu = idle_cpu(service, HEARTBEAT_SECONDS + 1)
            local = worst([
                delivery(clients, write=self.writes.by_the_server(service.base), settle=2.0)
                for _ in range(self.config.probes)
            ])
        return cpu, local

    def today(self, today: servers.Process, database_url: str, compared: tuple[float, Delivery]) -> None:
        count = self.config.compared
        cpu_now, local_now = compared
        progress(f"streams: {count} clients on today's service ({BASELINE[:8]})")
        warm_up(today, self.writes)
        with Clients(port=today.port, count=count) as clients:
            time.sleep(2.0)
            cpu = idle_cpu(today, HEARTBEAT_SECONDS + 1)
            local = worst([
                delivery(clients, write=self.writes.by_the_server(today.base), settle=3.0)
                for _ in range(self.config.probes)
            ])
        today.check_alive()
        self.rows += [
            Row(f"stream.{count}.idle.cpu", cpu_now, "% core"),
            Row(f"stream.{count}.idle.cpu.today", cpu, "% core"),
            Row(f"stream.{count}.local.p99", local_now.p99_ms, "ms"),
            Row(f"stream.{count}.local.p99.today", local.p99_ms, "ms"),
        ]
        self.notes.append(
            f"Today: `*.today` is the service at {BASELINE[:8]} (each client polled the revisions table itself), "
            f"extracted with `git archive` and run from a temporary directory with PYTHONPATH, on an empty "
            f"database, against the same {count} clients and probes; the rows beside it are this service's. "
            f"Today's clients received {local.received}/{local.clients} of the worst probe."
        )

    def _delivery_rows(self, name: str, probes: list[Delivery], *, bound_ms: float) -> None:
        shown = worst(probes)
        everyone = all(probe.received == probe.clients for probe in probes)
        self.rows += [
            Row(f"{name}.received", shown.received, "clients", target="all", ok=everyone),
            Row(f"{name}.p50", shown.p50_ms, "ms"),
            Row(f"{name}.p99", shown.p99_ms, "ms", target=f"< {bound_ms:.0f}", ok=everyone and shown.p99_ms < bound_ms),
            Row(f"{name}.max", shown.max_ms, "ms"),
        ]

    def _reads_rows(self, without: list[wrk.WrkResult], with_clients: list[wrk.WrkResult]) -> None:
        base_rps = statistics.median(run.rps for run in without)
        base_p99 = statistics.median(run.p99_ms for run in without)
        rps = statistics.median(run.rps for run in with_clients)
        p99 = statistics.median(run.p99_ms for run in with_clients)
        self.rows += [
            Row("stream.reads.rps", rps, "req/s", base_rps, rps / base_rps, ">= 0.90x none", rps / base_rps >= 0.9),
            Row("stream.reads.p99", p99, "ms", base_p99, p99 / base_p99, "<= 1.10x none", p99 / base_p99 <= 1.1),
        ]


def main() -> None:
    """`python -m bench.streams`: these figures alone."""
    from bench import report
    from bench.__main__ import aws_environment

    wrk.ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="statuscache-bench-streams-") as directory:
        fake = TimedFakeAws()
        fake.start()
        try:
            with aws_environment(fake.endpoint_url):
                bench = StreamBench(Config(), workdir=Path(directory), fake=fake)
                bench.run()
        finally:
            fake.stop()
    print(report.table(bench.rows))
    for note in bench.notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
