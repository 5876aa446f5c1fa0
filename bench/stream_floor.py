"""python -m bench.stream_floor: what an idle change-stream client costs the service, against the server's own floor.

The floor is a raw ASGI app on the same uvicorn (httptools, uvloop, no proxy-headers middleware, no access log:
what `serve` runs) that answers the stream's head and opening block and holds the connection until the client
leaves, and nothing else. Both are measured the same way, each a fresh process with the same open-file limit:
RSS after one stream opened and closed, then with N idle clients of bench.sse_clients connected (2,500 per
client process); per client, the difference / N. Rounds alternate which of the two goes first; the per-client
figures are medians. Anonymous first (the issue's measure), then as a dashboard reads the stream in a protected
deployment: the service with a tokens file and a CORS origin, every client sending a token and an Origin (the
floor's clients too, so uvicorn reads the same requests). Anonymous, the service is also measured as the issue
asks: its CPU while the clients sit idle (over a heartbeat period and more), and the delivery of a change it
writes itself to every client (worst of 3 probes a round).

    .venv/bin/python -m bench.stream_floor [--clients 5000] [--rounds 2]

The floor's app is bench.stream_floor_app, a module of its own: served, it imports nothing but itself.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import report, seed, servers, streams
from bench.fake import TimedFakeAws
from bench.report import Row

TARGET_RATIO = 1.25
TARGET_CPU = 5.0
TARGET_DELIVERY_MS = 1000.0
TOKEN = "sct_bench_" + "f" * 40
DASHBOARD = "https://dashboard.example"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Setup:
    """The service's configuration (its environment), and what every client sends besides the request line."""

    name: str
    env: dict[str, str]
    headers: tuple[str, ...]
    # Whether idle CPU and delivery are measured too (the setup).
    probes: bool


def setups(workdir: Path) -> list[Setup]:
    tokens = workdir / "stream-floor-tokens"
    tokens.write_text(f"bench {hashlib.sha256(TOKEN.encode()).hexdigest()}\n")
    protected = {"STATUSCACHE_API_TOKENS_FILE": str(tokens), "STATUSCACHE_CORS_ORIGINS": DASHBOARD}
    return [
        Setup("stream.held", {}, (), probes=True),
        Setup("stream.held.tokens", protected, (f"Authorization: Bearer {TOKEN}", f"Origin: {DASHBOARD}"),
              probes=False),
    ]  # fmt: skip


def start_floor(*, log_dir: Path, name: str = "stream-floor") -> servers.Process:
    """The floor on uvicorn as `serve` runs the service: httptools, uvloop, no proxy headers, no access log."""
    return servers.start_asgi(
        "bench.stream_floor_app:app", env={}, log_dir=log_dir, name=name,
        options=["--http", "httptools", "--loop", "uvloop", "--no-proxy-headers"], preexec_fn=streams.raise_fd_limit,
    )  # fmt: skip


def open_one(process: servers.Process, setup: Setup) -> None:
    """One stream opened, read up to its opening block, and closed: whatever the first stream builds is built."""
    headers = dict(header.split(": ", 1) for header in setup.headers)
    with httpx.stream("GET", process.base + streams.PATH, headers=headers, timeout=10) as response:
        assert response.status_code == 200, (setup.name, response.status_code)
        for line in response.iter_lines():
            if line.startswith(": connected"):
                break


@dataclass(frozen=True)
class Held:
    """RSS with no stream client, and with `clients` connected."""

    clients: int
    before_mb: float
    after_mb: float

    @property
    def per_client_kb(self) -> float:
        return (self.after_mb - self.before_mb) * 1000 / self.clients if self.clients else float("nan")


@contextmanager
def holding(process: servers.Process, *, count: int, setup: Setup) -> Iterator[tuple[streams.Clients, Held]]:
    """`count` idle clients connected to `process`, and its RSS before and with them."""
    before = process.rss_mb()
    with streams.Clients(port=process.port, count=count, headers=setup.headers) as clients:
        # Connected means each client read its opening block; what the server does right after has settled.
        time.sleep(2.0)
        yield clients, Held(clients.connected, before, process.rss_mb())
    process.check_alive()


@dataclass
class Figures:
    floor: list[Held] = field(default_factory=list)
    service: list[Held] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    local: list[streams.Delivery] = field(default_factory=list)


class StreamFloorBench:
    def __init__(self, *, clients: int, rounds: int, workdir: Path, fake: TimedFakeAws) -> None:
        self.clients = clients
        self.rounds = rounds
        self.workdir = workdir
        self.fake = fake
        self.writes = streams.Writes(fake, prefix="bench-stream-floor")
        self.setups = setups(workdir)
        self.figures = {setup.name: Figures() for setup in self.setups}

    def run(self) -> None:
        database = self.workdir / "stream-floor.db"
        seed.seed_sqlite_sync(database, seed.synthetic(100, prefix="held"))
        url = f"sqlite+aiosqlite:///{database}"
        for setup in self.setups:
            figures = self.figures[setup.name]
            for number in range(self.rounds):
                if number % 2 == 0:
                    self.floor(setup, figures)
                    self.service(setup, figures, url)
                else:
                    self.service(setup, figures, url)
                    self.floor(setup, figures)
                progress(
                    f"{setup.name} round {number + 1}/{self.rounds}: service {figures.service[-1].per_client_kb:.2f} "
                    f"KB per client, floor {figures.floor[-1].per_client_kb:.2f} KB"
                )

    def floor(self, setup: Setup, figures: Figures) -> None:
        with start_floor(log_dir=self.workdir) as floor:
            open_one(floor, setup)
            with holding(floor, count=self.clients, setup=setup) as (_, held):
                figures.floor.append(held)

    def service(self, setup: Setup, figures: Figures, database_url: str) -> None:
        with streams.start(name="stream-service", database_url=database_url, fake=self.fake, workdir=self.workdir,
                           env=setup.env) as service:  # fmt: skip
            if setup.probes:
                # A stream opened and closed, and one live lookup: the server's first builds its AWS clients.
                streams.warm_up(service, self.writes)
            else:
                open_one(service, setup)
            with holding(service, count=self.clients, setup=setup) as (clients, held):
                figures.service.append(held)
                if not setup.probes:
                    return
                progress(f"stream floor: {clients.connected} idle clients on the service; its CPU over "
                         f"{streams.HEARTBEAT_SECONDS + 1:g}s")  # fmt: skip
                figures.cpu.append(streams.idle_cpu(service, streams.HEARTBEAT_SECONDS + 1))
                figures.local += [
                    streams.delivery(clients, write=self.writes.by_the_server(service.base), settle=2.0)
                    for _ in range(3)
                ]

    def rows(self) -> list[Row]:
        rows: list[Row] = []
        for setup in self.setups:
            figures = self.figures[setup.name]
            connected = min(held.clients for held in figures.floor + figures.service)
            floor_kb = statistics.median(held.per_client_kb for held in figures.floor)
            service_kb = statistics.median(held.per_client_kb for held in figures.service)
            ratio = service_kb / floor_kb
            target, ok = f"<= {TARGET_RATIO:.2f}x floor", ratio <= TARGET_RATIO
            rows += [
                Row(f"{setup.name}.clients", connected, "clients", target=f"== {self.clients}",
                    ok=connected == self.clients),
                Row(f"{setup.name}.floor", floor_kb, "KB/client"),
                Row(f"{setup.name}.per_client", service_kb, "KB/client", floor_kb, ratio, target, ok),
            ]  # fmt: skip
            if setup.probes:
                rows += self.probe_rows(setup.name, figures)
        return rows

    @staticmethod
    def probe_rows(name: str, figures: Figures) -> list[Row]:
        cpu = max(figures.cpu)
        local = streams.worst(figures.local)
        everyone = all(probe.received == probe.clients for probe in figures.local)
        delivered = everyone and local.p99_ms < TARGET_DELIVERY_MS
        return [
            Row(f"{name}.idle.cpu", cpu, "% core", target=f"< {TARGET_CPU:g}", ok=cpu < TARGET_CPU),
            Row(f"{name}.local.received", local.received, "clients", target="all", ok=everyone),
            Row(f"{name}.local.p50", local.p50_ms, "ms"),
            Row(f"{name}.local.p99", local.p99_ms, "ms", target=f"< {TARGET_DELIVERY_MS:.0f}", ok=delivered),
            Row(f"{name}.local.max", local.max_ms, "ms"),
        ]

    def note(self) -> str:
        rounds = "; ".join(
            f"{setup.name}: "
            + ", ".join(
                f"{service.per_client_kb:.2f} / {floor.per_client_kb:.2f}"
                for service, floor in zip(self.figures[setup.name].service, self.figures[setup.name].floor,
                                          strict=True)
            )
            for setup in self.setups
        )  # fmt: skip
        return (
            f"Held streams: {self.clients} idle clients (bench.sse_clients), on the service (`serve --no-poll`, "
            "SQLite) and on the floor (a raw ASGI app holding the stream's head open on the same uvicorn, "
            f"httptools and uvloop), each a fresh process, {self.rounds} alternating rounds; KB per client = "
            "(RSS with the clients - RSS before) / clients, median. `tokens`: the service with a tokens file and "
            "a CORS origin, every client (the floor's too) sending a token and an Origin. Per round, service / "
            f"floor, KB: {rounds}. Idle CPU over {streams.HEARTBEAT_SECONDS + 1:g}s (the worst round); delivery of a "
            "change the service writes itself (a live lookup, stored) from just before its request to each client, "
            f"worst of {len(self.figures[self.setups[0].name].local)} probes."
        )


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import aws_environment

    parser = argparse.ArgumentParser(prog="python -m bench.stream_floor", description=__doc__)
    parser.add_argument("--clients", type=int, default=5000, help="idle stream clients held open (default 5000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the floor and the service")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="statuscache-bench-stream-floor-")))
        fake = TimedFakeAws()
        fake.start()
        stack.callback(fake.stop)
        stack.enter_context(aws_environment(fake.endpoint_url))
        bench = StreamFloorBench(clients=args.clients, rounds=max(1, args.rounds), workdir=workdir, fake=fake)
        bench.run()
    rows = bench.rows()
    print(f"python -m bench.stream_floor --clients {args.clients} --rounds {args.rounds}; "
          f"{time.monotonic() - started:.0f}s; load average {report.load_average()} at end")  # fmt: skip
    print(report.table(rows))
    print(f"- {bench.note()}")
    missed = [row.figure for row in rows if row.ok is False]
    print(f"targets missed: {', '.join(missed) if missed else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
