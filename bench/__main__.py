"""python -m bench: every figure of the benchmark, side by side with the ceiling, as one stable table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from bench import events, history, ingest, lists, live, load, report, sampling, seed, servers, storms, streams, wrk
from bench.fake import TimedFakeAws
from bench.report import Row

REGION = seed.REGION
LIVE_BUDGET = 20.0  # STATUSCACHE_LIVE_LOOKUPS_PER_SECOND's default, set explicitly for the storm server


@dataclass(frozen=True)
class Config:
    rounds: int = 3
    duration: float = 5.0
    connections: int = 32
    threads: int = 2
    cached_images: int = 1000
    storm_requests: int = 500
    unknown_requests: int = 2000
    ingest_images: int = 1000  # five changes each
    ingest_batches: tuple[int, ...] = (10, 100)
    reconcile_amis: int = 900
    reconcile_settled: int = 90
    reconcile_building: int = 10
    live_per_path: int = 25
    event_images: int = 5  # each walked through five Image Builder states: 25 events
    memory_images: int = 10_000
    stream_clients: int = 10_000
    stream_compared: int = 500  # clients in the side-by-side with today's change stream
    history_images: int = 10_000  # x 50 transitions each
    postgres: bool = True
    profile: str = "auto"  # auto: when a throughput or latency target is missed; always; never

    def describe(self) -> str:
        return (
            f"python -m bench --rounds {self.rounds} --duration {self.duration:g}; wrk -t{self.threads} "
            f"-c{self.connections} --latency; {self.cached_images} cached images, memory over {self.memory_images}"
        )


QUICK = Config(
    rounds=1, duration=2.0, cached_images=1000, ingest_images=200, reconcile_amis=90, reconcile_settled=9,
    reconcile_building=1, live_per_path=5, memory_images=2000, stream_clients=2000, stream_compared=200,
    history_images=1000,
)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def aws_environment(endpoint: str) -> Iterator[None]:
    """Point this process's botocore at the fake (the in-process reconcile); restore the environment after."""
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_PROFILE")
    previous = {name: os.environ.get(name) for name in names}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGION
    )
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class Scrapes:
    first_ms: float
    steady_ms: float
    text_bytes: int
    gzip_bytes: int
    samples: int


def metrics_scrapes(base: str) -> Scrapes:
    """GET /metrics as Prometheus does (gzip): the first scrape, then the steady state."""
    def scrape(client: httpx.Client) -> tuple[float, int]:
        # Timed to the last byte on the wire, not decompressed here: the client's own work is not the service's.
        started = time.perf_counter()
        with client.stream("GET", "/metrics", headers={"Accept-Encoding": "gzip"}) as response:
            size = sum(len(chunk) for chunk in response.iter_raw())
        return (time.perf_counter() - started) * 1000, size

    with httpx.Client(base_url=base, timeout=60.0) as client:
        first_ms, gzip_bytes = scrape(client)
        steady = [scrape(client)[0] for _ in range(5)]
        plain = client.get("/metrics", headers={"Accept-Encoding": "identity"}).content
    samples = sum(1 for line in plain.splitlines() if line and not line.startswith(b"#"))
    return Scrapes(first_ms, statistics.median(steady), len(plain), gzip_bytes, samples)


class Bench:
    def __init__(self, config: Config, *, workdir: Path, fake: TimedFakeAws) -> None:
        self.config = config
        self.workdir = workdir
        self.fake = fake
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.profile_text: str | None = None

    def sqlite_url(self, name: str) -> str:
        return f"sqlite+aiosqlite:///{self.workdir / name}"

    def serve(self, name: str, *, database: str, extra_env: dict[str, str] | None = None) -> servers.Process:
        return servers.start_serve(
            name=name, database_url=self.sqlite_url(database), aws_endpoint=self.fake.endpoint_url,
            log_dir=self.workdir, extra_env=extra_env,
        )

    # -- cached describe, 304, list pages: alternated with their ceilings --------------------------------------------

    def http(self) -> None:
        config = self.config
        progress(f"seeding a SQLite cache with {config.cached_images} images")
        images = seed.synthetic(config.cached_images)
        seed.seed_sqlite_sync(self.workdir / "cached.db", images)
        image_ids = [image.image_id for image in images]
        with self.serve("cached", database="cached.db") as service:
            calls_before = self.fake.total_calls()
            described = load.describe_all(service.base, image_ids)
            body = sorted(described.bodies, key=len)[len(described.bodies) // 2]
            (self.workdir / "ceiling-body.json").write_bytes(body)
            self.notes.append(
                f"Ceiling body: a real cached answer of median size ({len(body)} bytes; answers range "
                f"{min(map(len, described.bodies))}-{max(map(len, described.bodies))} bytes)."
            )
            paths = [load.describe_path(image_id) for image_id in image_ids]
            rotate = wrk.write_script(self.workdir, "rotate.lua", wrk.rotation_script(paths, threads=config.threads))
            etags = load.DescribeEtags(
                service.base, image_ids, auth={}, script=self.workdir / "etag.lua", threads=config.threads
            )
            etags.refresh()
            workloads = [
                load.Workload("describe", rotate),
                load.Workload("describe-304", self.workdir / "etag.lua", valid=etags.current, refresh=etags.refresh),
            ]
            with servers.start_ceiling(body_path=self.workdir / "ceiling-body.json", log_dir=self.workdir) as ceiling:
                progress("warming up both servers")
                for target in (ceiling, service):
                    wrk.run(target.base, script=rotate, duration=1, connections=config.connections)
                etags.refresh()
                progress(f"{config.rounds} rounds of ceiling/service pairs, {config.duration:g}s each")
                pairs = load.alternate(
                    ceiling=ceiling, service=service, workloads=workloads, rounds=config.rounds,
                    duration=config.duration, connections=config.connections, threads=config.threads,
                    progress=progress,
                )
            cached_calls = self.fake.total_calls() - calls_before
            self._http_rows(pairs, cached_calls=cached_calls)
            # List pages, against their own ceiling (the same route serving a real page, ~16 KB).
            rows, notes = lists.measure(
                service, workdir=self.workdir, rounds=config.rounds, duration=config.duration,
                connections=config.connections, threads=config.threads, progress=progress,
            )
            self.rows += rows
            self.notes += notes
            if self._should_profile():
                progress("profiling the service under wrk (py-spy)")
                sampled = sampling.profile_during_load(
                    service, script=rotate, workdir=self.workdir, duration=config.duration,
                    connections=config.connections,
                )
                self.profile_text = sampling.render(sampled)
            self.one_id_storm(service)

    def _http_rows(self, pairs: dict[str, list[load.Pair]], *, cached_calls: int) -> None:
        every_ceiling = [pair.ceiling for runs in pairs.values() for pair in runs]
        self.rows += [
            Row("ceiling.rps", statistics.median(r.rps for r in every_ceiling), "req/s"),
            Row("ceiling.p50", statistics.median(r.p50_ms for r in every_ceiling), "ms"),
            Row("ceiling.p99", statistics.median(r.p99_ms for r in every_ceiling), "ms"),
        ]
        targets = {"describe": 0.8, "describe-304": 0.9}
        names = {"describe": "describe.cached", "describe-304": "describe.304"}
        for workload, runs in pairs.items():
            summary = load.summarize(runs)
            name = names[workload]
            floor = targets.get(workload)
            self.rows.append(
                Row(
                    f"{name}.rps", summary.rps, "req/s", summary.ceiling_rps, summary.rps_ratio,
                    f">= {floor:.2f}x ceiling" if floor else "",
                    summary.rps_ratio >= floor if floor else None,
                )
            )
            self.rows.append(Row(f"{name}.p50", summary.p50_ms, "ms", summary.ceiling_p50_ms, summary.p50_ratio))
            p99_target = workload == "describe"
            self.rows.append(
                Row(
                    f"{name}.p99", summary.p99_ms, "ms", summary.ceiling_p99_ms, summary.p99_ratio,
                    "<= 1.50x ceiling" if p99_target else "", summary.p99_ratio <= 1.5 if p99_target else None,
                )
            )
        self.rows.append(Row("describe.cached.aws_calls", cached_calls, "calls", target="== 0", ok=cached_calls == 0))

    def _should_profile(self) -> bool:
        if self.config.profile == "never" or not sampling.available():
            return False
        return self.config.profile == "always" or any(
            row.ok is False for row in self.rows if row.figure.startswith("describe.")
        )

    # -- miss storms --------------------------------------------------------------------------------------

    def one_id_storm(self, service: servers.Process) -> None:
        image_id = "bench-storm-one-id"
        self.fake.create_image_stack(region=REGION, image_id=image_id)
        progress(f"{self.config.storm_requests} concurrent requests for one uncached id")
        result = storms.one_id_storm(
            self.fake, base=service.base, image_id=image_id, requests=self.config.storm_requests
        )
        ok_answers = result.statuses.get(200, 0)
        self.rows += [
            Row(
                "storm.one_id.live_lookups", result.describe_stacks, "lookups", target="== 1",
                ok=result.describe_stacks == 1 and ok_answers == result.requests,
            ),
            Row("storm.one_id.aws_calls", result.aws_calls, "calls"),
            Row("storm.one_id.shared_answers", result.misses, "answers"),
        ]
        self.notes.append(
            f"One-id storm: {result.requests} concurrent GETs over warm connections in {result.seconds:.2f}s, "
            f"answers {dict(sorted(result.statuses.items()))}; {result.misses} carried X-Cache: MISS (answered from "
            f"the one shared live lookup), {result.requests - result.misses} were hits; AWS calls {result.aws_calls} "
            f"(DescribeStacks {result.describe_stacks}). The wall time is mostly the benchmark's own Python client, "
            "which shares its process with moto."
            + (f" First request without an answer: {result.first_error}." if result.first_error else "")
        )

    def unknown_storm(self) -> None:
        config = self.config
        with self.serve(
            "storm", database="storm.db",
            # One client: its share of the budget is the whole budget, so the figure stays the region's.
            extra_env={
                "STATUSCACHE_LIVE_LOOKUPS_PER_SECOND": f"{LIVE_BUDGET:g}",
                "STATUSCACHE_LIVE_LOOKUPS_PER_CALLER_PER_SECOND": f"{LIVE_BUDGET:g}",
            },
        ) as service:
            progress(f"{config.unknown_requests} requests for distinct unknown ids (budget {LIVE_BUDGET:g}/s)")
            result = storms.unknown_ids_storm(
                self.fake, base=service.base, prefix="bench-unknown", requests=config.unknown_requests,
                rate=LIVE_BUDGET,
            )
        calls_per_lookup = result.aws_calls / result.live_lookups if result.live_lookups else 0.0
        call_bound = result.lookup_bound * max(calls_per_lookup, 1.0)
        answered = result.not_found + result.throttled
        self.rows += [
            Row(
                "storm.unknown.aws_calls", result.aws_calls, "calls", target=f"<= budget ({call_bound:.0f})",
                ok=result.aws_calls <= call_bound and answered == result.requests,
            ),
            Row("storm.unknown.live_lookups", result.live_lookups, "lookups"),
            Row("storm.unknown.404", result.not_found, "answers"),
            Row(
                "storm.unknown.429", result.throttled, "answers", target="Retry-After+message",
                ok=result.malformed_429 == 0 and result.throttled > 0,
            ),
        ]
        self.notes.append(
            f"Unknown-ids storm: {result.requests} GETs, 64 in flight, in {result.seconds:.2f}s; the budget "
            f"({LIVE_BUDGET:g}/s, burst {max(LIVE_BUDGET, 1):g}) admits at most {result.lookup_bound:.0f} lookups "
            f"in that time, {calls_per_lookup:.1f} AWS calls each; other answers {result.other or 'none'}; "
            f"429s without Retry-After or a {{\"message\"}} body: {result.malformed_429}."
            + (f" First request without an answer: {result.first_error}." if result.first_error else "")
        )

    # -- live path vs cache -------------------------------------------------------------------------------

    def live_vs_cache(self) -> None:
        per_path = self.config.live_per_path
        ids = live.create_images(self.fake, per_path=per_path, prefix="bench-live")
        with self.serve(
            "live", database="live.db",
            extra_env={
                "STATUSCACHE_LIVE_LOOKUPS_PER_SECOND": "100000",
                "STATUSCACHE_LIVE_LOOKUPS_PER_CALLER_PER_SECOND": "100000",
            },
        ) as service:
            progress(f"{per_path} AMI-path and {per_path} stack-path describes, live then cached")
            timings = live.live_vs_cached(self.fake, base=service.base, ids=ids)
        for timing in timings:
            prefix = f"live.{timing.path}"
            self.rows += [
                Row(f"{prefix}.p50", timing.live_p50_ms, "ms"),
                Row(f"{prefix}.cached_p50", timing.cached_p50_ms, "ms"),
                Row(f"{prefix}.speedup", timing.speedup, "x"),
                Row(f"{prefix}.calls", timing.live_calls_per_answer, "calls/answer"),
                Row(
                    f"{prefix}.cached_calls", timing.cached_calls_per_answer, "calls/answer",
                    target="== 0", ok=timing.cached_calls_per_answer == 0,
                ),
            ]
        self.notes.append(
            "Live vs cache: sequential GETs on one keep-alive httpx connection (the client's own cost is in both "
            "figures); live answers are the service doing pcluster's calls against moto on loopback."
        )

    # -- ingest and reconcile (in-process) -----------------------------------------------------------------

    def ingest(self) -> None:
        config = self.config
        progress(
            f"apply throughput: {config.ingest_images * 5} changes per run, batches {config.ingest_batches}, "
            f"{config.rounds} rounds"
        )
        runs = asyncio.run(
            ingest.apply_throughput(
                workdir=self.workdir, batches=config.ingest_batches, images=config.ingest_images,
                rounds=config.rounds, postgres=config.postgres,
            )
        )
        rates: dict[tuple[str, int], list[float]] = {}
        for run in runs:
            rates.setdefault((run.backend, run.batch), []).append(run.per_second)
        for backend in ("sqlite", "postgresql"):
            for batch in config.ingest_batches:
                if (backend, batch) not in rates:
                    continue
                rate = statistics.median(rates[(backend, batch)])
                target = backend == "sqlite" and batch == min(config.ingest_batches)
                self.rows.append(
                    Row(
                        f"ingest.{backend}.batch{batch}", rate, "changes/s",
                        target=">= 2000" if target else "", ok=rate >= 2000 if target else None,
                    )
                )
        if not config.postgres:
            self.rows.append(Row("ingest.postgresql", "n/a (--no-postgres)"))
        spread = {f"{backend}/{batch}": [round(rate) for rate in values] for (backend, batch), values in rates.items()}
        self.notes.append(
            f"Ingest: {config.ingest_images} images x 5 event-shaped changes (stack created, Image Builder BUILDING, "
            "AVAILABLE, stack CREATE_COMPLETE, AMI available), interleaved, handed to Cache.apply_many N at a time "
            "(10 is the SQS consumer's batch), each run on an empty database; the value is the median of the "
            f"rounds {spread}."
        )

    def reconcile(self) -> None:
        config = self.config
        total = config.reconcile_amis + config.reconcile_settled + config.reconcile_building
        progress(f"reconcile over {total} images in moto")
        run = asyncio.run(
            ingest.reconcile(
                self.fake, workdir=self.workdir, amis=config.reconcile_amis, settled=config.reconcile_settled,
                building=config.reconcile_building,
            )
        )
        allowed = run.pages + 2 * run.building_stacks + 1  # + one HeadBucket per distinct bucket
        self.rows += [
            Row("reconcile.first.aws_calls", run.first.aws_calls, "calls"),
            Row("reconcile.first.wall", run.first.seconds, "s"),
            Row("reconcile.first.moto", run.first.moto_seconds, "s"),
            Row(
                "reconcile.steady.aws_calls", run.steady.aws_calls, "calls",
                target=f"<= {allowed} (pages+2*bldg+1)", ok=run.steady.aws_calls <= allowed,
            ),
            Row("reconcile.steady.wall", run.steady.seconds, "s"),
            Row("reconcile.steady.moto", run.steady.moto_seconds, "s"),
        ]
        self.notes.append(
            f"Reconcile: {run.amis} AMIs + {run.settled_stacks} settled stacks + {run.building_stacks} building "
            f"stacks, fresh cache. First pass {run.first.by_operation}; steady pass {run.steady.by_operation} "
            f"({run.pages} list pages). Both passes run in this process next to moto; `.moto` is the part of the "
            "wall time during which moto had a request in flight."
        )

    # -- memory -------------------------------------------------------------------------------------------

    def memory(self) -> None:
        count = self.config.memory_images
        progress(f"memory: seeding {count} images, then one request to each")
        images = seed.synthetic(count, prefix="mem")
        seed.seed_sqlite_sync(self.workdir / "memory.db", images)
        with self.serve("memory", database="memory.db") as service:
            idle = service.rss_mb()
            paths = [load.describe_path(image.image_id) for image in images]
            answers = asyncio.run(storms.fire(service.base, paths, concurrency=16))
            if answers.statuses != {200: count}:
                raise RuntimeError(
                    f"memory run: expected {count} answers 200, got {dict(answers.statuses)} ({answers.first_error})"
                )
            rss = service.rss_mb()
            scrapes = metrics_scrapes(service.base)
            scraped_rss = service.rss_mb()
        name = "memory.rss_10k" if count == 10_000 else f"memory.rss_{count}"
        suffix = "10k" if count == 10_000 else str(count)
        self.rows += [
            Row("memory.rss_idle", idle, "MB"),
            Row(name, rss, "MB", target="<= 200", ok=rss <= 200),
            Row(f"metrics.scrape_{suffix}.first", scrapes.first_ms, "ms"),
            Row(f"metrics.scrape_{suffix}.steady", scrapes.steady_ms, "ms"),
            Row(f"metrics.scrape_{suffix}.text", scrapes.text_bytes / 1e6, "MB"),
            Row(f"metrics.scrape_{suffix}.gzip", scrapes.gzip_bytes / 1e6, "MB"),
            Row(f"memory.rss_{suffix}_scraped", scraped_rss, "MB"),
        ]
        self.notes.append(
            f"Metrics: GET /metrics over {count} cached images ({scrapes.samples} samples); the first scrape renders "
            "every image's series, later ones only the images that changed (none here: one aggregate query). "
            "`steady` is the median of 5 scrapes as Prometheus makes them (gzip); the sizes are of one scrape."
        )

    # -- events: SQS -> describe ------------------------------------------------------------------------

    def events(self) -> None:
        count = self.config.event_images
        image_ids = events.prepare_images(self.fake, count=count, prefix="bench-evt")
        queue_url = events.create_queue(self.fake, "bench-events")
        progress(f"{count * len(events.WALK)} Image Builder events through SQS, reconciliation off (3600 s)")
        extra = {"STATUSCACHE_EVENTS_QUEUE_URL": queue_url, "STATUSCACHE_RESYNC_SECONDS": "3600"}
        with servers.start_serve(
            name="events", database_url=self.sqlite_url("events.db"), aws_endpoint=self.fake.endpoint_url,
            log_dir=self.workdir, extra_env=extra, poll=True,
        ) as service:
            timing = events.event_latency(
                self.fake, base=service.base, queue_url=queue_url, image_ids=image_ids, new_image="bench-evt-new"
            )
        self.rows += [
            Row("events.count", timing.events, "events"),
            Row("events.to_describe.p50", timing.median_ms, "ms"),
            Row(
                "events.to_describe.worst", timing.worst_ms, "ms", target="<= 2000 ms", ok=timing.worst_ms <= 2000
            ),
            Row(
                "events.known.aws_calls", timing.aws_calls_per_known_event, "calls/event", target="== 0",
                ok=timing.aws_calls_per_known_event == 0,
            ),
            Row("events.new_image.aws_calls", timing.new_image_aws_calls, "calls"),
            Row("events.new_image.to_describe", timing.new_image_ms, "ms"),
        ]
        self.notes.append(
            "Events: each Image Builder state change is made in moto and sent to the queue as EventBridge would; the "
            "time runs from SendMessage to the first describe showing it (polled every 2 ms). Known images cost no "
            "AWS call; an image the cache has never seen costs one targeted refresh."
        )

    # -- the change stream at dashboard scale (bench/streams.py) ----------------------------------------

    def streams(self) -> None:
        config = self.config
        # A fake AWS of its own, as `python -m bench.streams` has: a local probe's live lookup (part of the
        # delivery it times) is a DescribeImages that moto answers by walking every AMI it holds, and the
        # earlier parts leave a thousand there (the reconcile part alone 900): over a second per lookup.
        with TimedFakeAws() as fake, aws_environment(fake.endpoint_url):
            stream_bench = streams.StreamBench(
                streams.Config(
                    clients=config.stream_clients, compared=config.stream_compared,
                    connections=config.connections, threads=config.threads,
                ),
                workdir=self.workdir, fake=fake,
            )
            stream_bench.run()
        self.rows += stream_bench.rows
        self.notes += stream_bench.notes

    # -- history at scale (bench/history.py) ---------------------------------------------------------------

    def history(self) -> None:
        config = dataclasses.replace(
            history.HistoryConfig(), images=self.config.history_images, rounds=self.config.rounds,
            duration=min(self.config.duration, history.HistoryConfig.duration), postgres=self.config.postgres,
        )
        outcome = history.run(config, fake=self.fake, workdir=self.workdir)
        self.rows += outcome.rows
        self.notes += outcome.notes

    def run(self) -> None:
        self.http()
        self.events()
        self.unknown_storm()
        self.live_vs_cache()
        self.ingest()
        self.reconcile()
        self.memory()
        self.streams()
        self.history()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, help="ceiling/service pairs per figure (default 3)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 5)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: 1 round of 2s, smaller data sets")
    parser.add_argument(
        "--write-doc", action="store_true", help="rewrite the 'Latest run' section of docs/BENCHMARKS.md"
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL ingest figures")
    parser.add_argument(
        "--profile", choices=("auto", "always", "never"), default="auto",
        help="py-spy the service under load: when a describe target is missed (auto), always, or never",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser


def _config(args: argparse.Namespace) -> Config:
    base = QUICK if args.quick else Config()
    overrides: dict[str, object] = {"postgres": not args.no_postgres, "profile": args.profile}
    if args.rounds is not None:
        overrides["rounds"] = max(1, args.rounds)
    if args.duration is not None:
        overrides["duration"] = max(1.0, args.duration)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = _config(args)
    wrk.ensure_wrk()
    signal.signal(signal.SIGTERM, _terminate)
    facts = report.machine()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="statuscache-bench-")))
        fake = TimedFakeAws()
        fake.start()
        stack.callback(fake.stop)
        stack.enter_context(aws_environment(fake.endpoint_url))
        bench = Bench(config, workdir=workdir, fake=fake)
        bench.run()
    run_line = f"{config.describe()}; {time.monotonic() - started:.0f}s; load average {report.load_average()} at end"
    print(f"statuscache bench: {report.machine_line(facts)}")
    print(f"run: {run_line}")
    print(report.table(bench.rows))
    missed = [row.figure for row in bench.rows if row.ok is False]
    print(f"targets missed: {', '.join(missed) if missed else 'none'}")
    if bench.profile_text:
        print()
        print(bench.profile_text)
    if args.write_doc:
        path = report.write_doc(
            rows=bench.rows, facts=facts, settings=run_line, notes=bench.notes, profile=bench.profile_text
        )
        print(f"wrote {path}")
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
